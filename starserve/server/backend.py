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
from starserve.cluster.types import MigrationRecord, MigrationStatus
from starserve.server.streams import Piece, RequestStream

log = logging.getLogger(__name__)

OUTPUT_WAIT_S = 0.5  # long-poll length of each instance's output pump
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
        self._max_model_len = await self.cluster.prefill[0].actor.max_model_len.remote()

    async def stop(self) -> None:
        for task in [*self._pumps, *self._tasks]:
            task.cancel()

    @property
    def max_model_len(self) -> int:
        assert self._max_model_len is not None, "start() the backend first"
        return self._max_model_len

    async def encode(self, prompt: str | None, messages: list[dict[str, str]] | None) -> list[int]:
        result: list[int] = await self.cluster.prefill[0].actor.encode.remote(prompt, messages)
        return result

    async def _pump(self, handle: Any) -> None:
        while True:
            try:
                chunks = await handle.wait_outputs(OUTPUT_WAIT_S)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("output pump of instance %s failed", handle.instance_id)
                await asyncio.sleep(OUTPUT_WAIT_S)
                continue
            for chunk in chunks:
                stream = self._streams.get(chunk.request_id)
                if stream is not None:
                    stream.push(chunk)

    async def generate(
        self, request_id: str, prompt: list[int], params: Any
    ) -> AsyncIterator[Piece]:
        """Submit and yield the output in order; aborts the request if the caller stops early."""
        stream = RequestStream(request_id)
        self._streams[request_id] = stream
        task = asyncio.create_task(self._submit(stream, prompt, params))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            async for piece in stream.pieces():
                yield piece
        finally:
            self._streams.pop(request_id, None)
            self._finished[request_id] = stream.token_times_s
            while len(self._finished) > KEEP_FINISHED:
                self._finished.popitem(last=False)
            if not stream.finished:
                await self.cluster.controller.abort.remote(request_id)

    async def _submit(self, stream: RequestStream, prompt: list[int], params: Any) -> None:
        try:
            await self.cluster.controller.submit.remote(stream.request_id, prompt, params)
        except Exception as err:
            log.error("request %s failed: %s", stream.request_id, err)
            stream.fail(err)

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


def _pause_of(record: MigrationRecord, times: list[float]) -> MigrationPause:
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    overlapping = [
        b - a
        for a, b in zip(times, times[1:], strict=False)
        if b >= record.started_at_s and a <= record.ended_at_s
    ]
    return MigrationPause(
        request_id=record.request_id,
        status=record.status.value,
        pause_ms=1000 * max(overlapping, default=0.0),
        normal_tpot_ms=1000 * statistics.median(gaps) if gaps else 0.0,
        engine_pause_ms=1000 * record.pause_s,
    )
