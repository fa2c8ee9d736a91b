"""The server's view of the cluster: submit, stream back in order, abort, gather metrics."""

from __future__ import annotations

import asyncio
import logging
import statistics
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starserve.cluster.controller import ClusterMetrics
from starserve.cluster.launch import Cluster
from starserve.cluster.types import MigrationRecord, MigrationStatus, NoInstanceError
from starserve.server.streams import Piece, RequestFailed, RequestStream

log = logging.getLogger(__name__)

OUTPUT_WAIT_S = 0.5  # long-poll length of each instance's output pump (and the lost-pump's)
KEEP_FINISHED = 4096  # finished requests whose token times are kept for migration stats


@dataclass(frozen=True, slots=True)
class MigrationPause:
    """What a migrated request saw: its largest token gap during the migration vs its TPOT."""

    request_id: str
    status: str
    pause_ms: float  # largest inter-token gap that overlaps the migration window
    normal_tpot_ms: float  # median inter-token gap of the same request
    engine_pause_ms: float  # time the source held it paused (final stage)


class ClusterBackend:
    """Owns the output pumps (one long-poll per instance) and the per-request streams."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self._streams: dict[str, RequestStream] = {}
        self._inputs: dict[str, tuple[list[int], Any]] = {}  # prompt, params (for replay)
        self._finished: OrderedDict[str, list[float]] = OrderedDict()
        self._pumps: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._records_seen = 0
        self._unjoined: list[MigrationRecord] = []
        self.pauses: list[MigrationPause] = []
        self._max_model_len: int | None = None

    async def start(self) -> None:
        import starserve.engine  # noqa: F401  (warm: validation builds its SamplingParams)

        self._pumps = [asyncio.create_task(self._pump(h)) for h in self.cluster.instances]
        self._pumps.append(asyncio.create_task(self._failover_pump()))
        self._max_model_len = await self._ask("max_model_len")
        self.vocab_size = await self._ask("vocab_size")

    async def stop(self) -> None:
        for task in [*self._pumps, *self._tasks]:
            task.cancel()

    @property
    def max_model_len(self) -> int:
        assert self._max_model_len is not None, "start() the backend first"
        return self._max_model_len

    async def encode(self, prompt: str | None, messages: list[dict[str, str]] | None) -> list[int]:
        """Token ids (through any instance that answers: tokenizing needs no particular one);
        ValueError when the chat template rejects the messages."""
        result: list[int] = await self._ask("encode", prompt, messages)
        return result

    async def _ask(self, method: str, *args: Any) -> Any:
        """Call `method` on the first instance that answers; RequestFailed(503) if none does.
        Errors of the call itself (bad input) are raised as they are."""
        from ray.exceptions import RayActorError

        for handle in self.cluster.instances:
            try:
                return await getattr(handle.actor, method).remote(*args)
            except RayActorError:
                continue
        raise RequestFailed("no instance is up", 503)

    async def _pump(self, handle: Any) -> None:
        failing = False
        while True:
            try:
                chunks = await handle.wait_outputs(OUTPUT_WAIT_S)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # dead or restarting: the controller fails it over
                if not failing:
                    log.warning("output pump of instance %s: %r", handle.instance_id, err)
                failing = True
                await asyncio.sleep(OUTPUT_WAIT_S)
                continue
            failing = False
            for chunk in chunks:
                stream = self._streams.get(chunk.request_id)
                if stream is not None:
                    stream.push(chunk)

    async def _failover_pump(self) -> None:
        """Resume each request the controller lost with a dead instance from the tokens the
        client already has (token replay on a live instance)."""
        while True:
            try:
                lost = await self.cluster.controller.wait_lost.remote(OUTPUT_WAIT_S)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("failover pump: %r", err)
                await asyncio.sleep(OUTPUT_WAIT_S)
                continue
            for request_id in lost:
                stream = self._streams.get(request_id)
                if stream is not None and not stream.finished:
                    self._spawn(self._resume(stream))

    async def _resume(self, stream: RequestStream) -> None:
        inputs = self._inputs.get(stream.request_id)
        if inputs is None:  # the client left meanwhile
            return
        prompt, params = inputs
        stream.drop_pending()
        log.warning("resuming %s after %d tokens", stream.request_id, len(stream.token_ids))
        try:
            await self.cluster.controller.resume.remote(
                stream.request_id, prompt, list(stream.token_ids), params
            )
        except Exception as err:
            stream.fail(_failure(stream.request_id, err))

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def generate(
        self,
        request_id: str,
        prompt: list[int],
        params: Any,
        deadline_s: float,
        stall_timeout_s: float,
    ) -> AsyncIterator[Piece]:
        """Submit and yield the output in order; aborts the request in the cluster unless its
        last token arrived (the caller stopped early, disconnected, or it failed or timed out).
        `deadline_s` is monotonic; RequestFailed(503) past it or after a stall."""
        stream = RequestStream(request_id)
        self._streams[request_id] = stream
        self._inputs[request_id] = (prompt, params)
        self._spawn(self._submit(stream, prompt, params))
        try:
            async for piece in stream.pieces(deadline_s, stall_timeout_s):
                yield piece
        finally:
            self._streams.pop(request_id, None)
            self._inputs.pop(request_id, None)
            self._finished[request_id] = stream.token_times_s
            while len(self._finished) > KEEP_FINISHED:
                self._finished.popitem(last=False)
            if not stream.completed:  # its own task: a cancelled caller cannot cancel it
                self._spawn(self._abort(request_id))

    async def _abort(self, request_id: str) -> None:
        try:
            await self.cluster.controller.abort.remote(request_id)
        except Exception as err:
            log.warning("abort of %s failed: %r", request_id, err)

    async def _submit(self, stream: RequestStream, prompt: list[int], params: Any) -> None:
        try:
            await self.cluster.controller.submit.remote(stream.request_id, prompt, params)
        except Exception as err:
            log.error("request %s failed: %s", stream.request_id, err)
            stream.fail(_failure(stream.request_id, err))

    async def metrics(self) -> ClusterMetrics:
        metrics: ClusterMetrics = await self.cluster.controller.metrics.remote(self._records_seen)
        self._records_seen += len(metrics.records)
        self._unjoined.extend(metrics.records)
        self._join_pauses()
        return metrics

    def _join_pauses(self) -> None:
        waiting = []
        for record in self._unjoined:
            times = self._finished.get(record.request_id)
            if times is None:
                if record.request_id in self._streams:
                    waiting.append(record)  # still streaming: join once it finishes
                continue
            if record.status is MigrationStatus.FINISHED:
                self.pauses.append(_pause_of(record, times))
        self._unjoined = waiting


def _failure(request_id: str, err: BaseException) -> RequestFailed:
    """What the client is told: 503 when no instance could take the request, else 500."""
    if isinstance(err, NoInstanceError):  # Ray re-raises the controller's error as this type
        return RequestFailed(f"service unavailable: {_cause(err)}", 503)
    return RequestFailed(f"request {request_id} failed: {_cause(err)}")


def _cause(err: BaseException) -> str:
    cause = getattr(err, "cause", None)  # a RayTaskError's original exception
    return str(cause if cause is not None else err).strip().splitlines()[-1]


def _pause_of(record: MigrationRecord, times: list[float]) -> MigrationPause:
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # Gaps that overlap the migration, except the first (prefill token -> first decode
    # token): it holds the wait for a decode instance with room, which a request migrated at
    # once on arrival would otherwise charge to its migration.
    overlapping = [
        b - a
        for a, b in zip(times[1:], times[2:], strict=False)
        if b >= record.started_at_s and a <= record.ended_at_s
    ]
    return MigrationPause(
        request_id=record.request_id,
        status=record.status.value,
        pause_ms=1000 * max(overlapping, default=0.0),
        normal_tpot_ms=1000 * statistics.median(gaps) if gaps else 0.0,
        engine_pause_ms=1000 * record.pause_s,
    )
