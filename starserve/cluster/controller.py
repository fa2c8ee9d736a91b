"""The controller: polls instance snapshots, dispatches through the shared policies, drives
migrations, and fails requests over when an instance dies. A plain class;
`starserve.cluster.launch` runs it as an async Ray actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starserve.cluster.handles import InstanceHandle
from starserve.cluster.health import Health
from starserve.cluster.liveness import LivenessListener
from starserve.cluster.migration import Migration, MigrationConfig
from starserve.cluster.policies import ControllerPolicy
from starserve.cluster.types import (
    InstanceDiedError,
    InstancePoll,
    InstanceUnavailableError,
    MigrationRecord,
    MigrationStatus,
    NoInstanceError,
)
from starserve.mechanism.placement import PrefillPlacer
from starserve.policy.types import InstanceSnapshot, MigrationDecision, NewRequest, RequestLoad

log = logging.getLogger(__name__)

MAX_REMEMBERED_ABORTS = 10_000
IMPORT_RETRY_S = 0.05  # a full destination is retried (re-dispatched) after this long


@dataclass(frozen=True, slots=True)
class ClusterMetrics:
    """What the server exports: latest polls, migration counters, finished migration records,
    and which instances are up."""

    polls: tuple[InstancePoll, ...]
    prefill_instance_ids: tuple[int, ...]
    decode_instance_ids: tuple[int, ...]
    num_migrations_started: int
    num_migrations_by_status: dict[str, int]
    records: tuple[MigrationRecord, ...]  # records[since:] of the request
    down_instance_ids: tuple[int, ...] = ()
    num_failures_by_instance: dict[int, int] = field(default_factory=dict)
    num_restarts_by_instance: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Incoming:
    """A request dispatched to an instance whose snapshot may not list it yet."""

    instance_id: int
    load: RequestLoad
    placed_at_s: float | None = None  # monotonic time the instance accepted it


@dataclass(slots=True)
class Controller:
    prefill: list[InstanceHandle]
    decode: list[InstanceHandle]
    policy: ControllerPolicy
    poll_interval_s: float = 0.05
    migration: MigrationConfig = field(default_factory=MigrationConfig)
    max_concurrent_migrations: int = 1
    auto_migrate: bool = True
    instance_timeout_s: float = 30.0  # no snapshot for this long: the instance is dead
    place_timeout_s: float = 60.0  # a request no instance admits for this long fails (503)
    failover_kv_tokens: int = 16_384  # hand-off KV kept for failover (context tokens, all)
    liveness_host: str | None = "127.0.0.1"  # where instances' liveness connections go
    health: Health = field(default_factory=Health)
    _polls: dict[int, InstancePoll] = field(default_factory=dict)
    _migrating: set[int] = field(default_factory=set)  # instance ids busy with a migration
    _records: list[MigrationRecord] = field(default_factory=list)
    _aborted: dict[str, None] = field(default_factory=dict)  # insertion-ordered set
    _incoming: dict[str, _Incoming] = field(default_factory=dict)
    _placement: dict[str, tuple[int, float]] = field(default_factory=dict)  # id -> (inst, t)
    _num_started: int = 0
    placer: PrefillPlacer = field(default_factory=PrefillPlacer.named)
    _prefill_queued_tokens: dict[int, int] = field(default_factory=dict)  # sent, not prefilled
    _local_replay_tokens: int = 0  # replays sent to decode instances, not yet accepted
    _kept: dict[str, int] = field(default_factory=dict)  # id -> instance with its staged KV
    _handoffs: OrderedDict[str, tuple[Any, int]] = field(default_factory=OrderedDict)
    _handoff_tokens: int = 0  # context tokens of the hand-off KV in `_handoffs`
    _liveness: LivenessListener | None = None
    _liveness_address: tuple[str, int] | None = None
    _stopping: bool = False
    _task: asyncio.Task[None] | None = None
    _migration_tasks: set[asyncio.Task[MigrationRecord]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._prefill_queued_tokens = {h.instance_id: 0 for h in self.prefill}
        self.health.on_failure = self._fail_over
        self.health.on_restarted = self._watch

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        await self._poll_once()
        if self.liveness_host is not None:
            self._liveness = LivenessListener(self._process_exited)
            self._liveness_address = await self._liveness.start(self.liveness_host)
            await asyncio.gather(*(self._watch(h) for h in [*self.prefill, *self.decode]))
        self._task = asyncio.create_task(self._poll_loop())

    async def stop(self) -> None:
        """Stop polling; migrations in flight finish (or roll back) first."""
        self._stopping = True
        if self._liveness is not None:
            self._liveness.close()
        if self._task is not None:
            self._task.cancel()
        await asyncio.gather(*self._migration_tasks, return_exceptions=True)
        self.health.stop()

    async def _poll_loop(self) -> None:
        # a policy may plan less often than the loads refresh (Llumnix v1: every 500 ms)
        plan_every_s = getattr(self.policy, "rebalance_interval_s", None) or 0.0
        last_plan_s = -math.inf
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self._poll_once()
                now_s = asyncio.get_running_loop().time()
                if self.auto_migrate and now_s - last_plan_s >= plan_every_s:
                    last_plan_s = now_s
                    self._launch(self.policy.plan_migrations(self.decode_snapshots()))
            except Exception:  # keep polling: one bad poll must not stop rebalancing
                log.exception("controller poll failed")

    async def _poll_once(self) -> None:
        await self._poll([*self.prefill, *self.decode])

    async def _poll(self, handles: list[InstanceHandle]) -> None:
        """Refresh snapshots of the live instances. A dead one (its actor died, or no snapshot
        for `instance_timeout_s`) leaves the policies' view at once and is failed over. Each
        answer is handled as it comes: a dead instance is not kept waiting for a busy one
        (whose answer waits for the end of its engine step)."""
        live = [h for h in handles if self.health.is_up(h.instance_id)]
        started_at_s = time.monotonic()
        await asyncio.gather(*(self._poll_one(h, started_at_s) for h in live))

    async def _poll_one(self, handle: InstanceHandle, started_at_s: float) -> None:
        instance_id = handle.instance_id
        try:
            result: InstancePoll | BaseException = await asyncio.wait_for(
                handle.poll(), self.instance_timeout_s
            )
        except asyncio.CancelledError:
            raise
        except Exception as err:
            result = err
        if isinstance(result, InstancePoll) and self.health.restarted(instance_id, result):
            self._declare_dead(handle, "its process was replaced (restarted)", kill=False)
        elif isinstance(result, InstancePoll):
            self._polls[instance_id] = result
            self.health.seen(instance_id)
            self._settle(instance_id, result.snapshot, started_at_s)
            return
        self._polls.pop(instance_id, None)
        if isinstance(result, InstanceDiedError):
            self._declare_dead(handle, str(result), kill=False)
        elif self.health.silent_for_s(instance_id) > self.instance_timeout_s:
            self._declare_dead(handle, f"no snapshot for {self.instance_timeout_s} s", True)
        else:
            log.warning("instance %s does not answer: %r", instance_id, result)

    def _settle(self, instance_id: int, snapshot: InstanceSnapshot, polled_at_s: float) -> None:
        """Forget what a fresh snapshot now shows (or shows finished): incoming requests it
        accepted before the poll, and placements of requests that ended there."""
        listed = {load.request_id for load in snapshot.requests}
        for request_id, entry in list(self._incoming.items()):
            placed = entry.placed_at_s
            if entry.instance_id == instance_id and placed is not None and placed < polled_at_s:
                del self._incoming[request_id]
        for request_id, (placed_on, placed_at_s) in list(self._placement.items()):
            if placed_on == instance_id and placed_at_s < polled_at_s and request_id not in listed:
                del self._placement[request_id]
                self._forget_handoff(request_id)  # it ended there

    def decode_snapshots(self) -> list[InstanceSnapshot]:
        """Live decode instances' latest snapshots, with what only the controller knows:
        whether the instance takes part in a migration, and requests dispatched to it that its
        snapshot does not list yet (KV in transfer: `incoming`, their blocks as good as
        reserved, as the snapshot contract counts a transfer)."""
        snapshots = []
        for handle in self.decode:
            poll = self._polls.get(handle.instance_id)
            if poll is None or not self.health.is_up(handle.instance_id):
                continue
            snapshots.append(self._with_controller_view(poll.snapshot))
        return snapshots

    def _with_controller_view(self, snap: InstanceSnapshot) -> InstanceSnapshot:
        known = {r.request_id for r in (*snap.requests, *snap.incoming)}
        loads = [
            e.load
            for rid, e in self._incoming.items()
            if e.instance_id == snap.instance_id and rid not in known
        ]
        blocks = sum(-(-load.num_context_tokens // snap.block_size) for load in loads)
        return dataclasses.replace(
            snap,
            is_migrating=snap.instance_id in self._migrating,
            incoming=(*snap.incoming, *loads) if loads else snap.incoming,
            num_free_blocks=max(0, snap.num_free_blocks - blocks),
        )

    # --- serving -------------------------------------------------------------------------
    async def submit(self, request_id: str, prompt: list[int], params: Any) -> None:
        """Prefill (again elsewhere if the prefill instance dies), then hand the request to the
        decode instance the policy picks. NoInstanceError when no instance can take it."""
        await self._prefill_and_place(request_id, prompt, params, None)

    async def resume(
        self, request_id: str, prompt: list[int], generated: list[int], params: Any
    ) -> None:
        """Token replay of a request whose decode instance died: re-prefill prompt + the
        tokens already streamed, and continue from the next token.

        A dead instance loses many requests at once. Their re-prefills are shared between the
        prefill instances (queued there like new requests) and the decode instances
        (prefilled locally, in the decode batch, as Dynamo's conditional disaggregation
        does when the prefill queue is long): each replay goes where fewer replay tokens are
        queued, so the burst takes about half the time on either alone."""
        if await self._resume_staged(request_id, prompt, generated, params):
            return
        if await self._resume_handoff(request_id, prompt, generated, params):
            return
        num_tokens = len(prompt) + len(generated)
        prefill_up = [h for h in self.prefill if self.health.is_up(h.instance_id)]
        queued = min((self._prefill_queued_tokens.get(h.instance_id, 0) for h in prefill_up),
                     default=None)  # fmt: skip
        if queued is not None and queued <= self._local_replay_tokens:
            await self._prefill_and_place(request_id, prompt, params, generated)
            return
        self._local_replay_tokens += num_tokens
        try:
            new = NewRequest(request_id, num_tokens, None)
            await self._place(new, lambda dst: dst.replay(request_id, prompt, generated, params))
        finally:
            self._local_replay_tokens -= num_tokens

    async def _resume_staged(
        self, request_id: str, prompt: list[int], generated: list[int], params: Any
    ) -> bool:
        """Resume on the destination of a migration whose source died after a stage arrived:
        its KV up to that stage is kept, only the tokens after it are prefilled."""
        instance_id = self._kept.pop(request_id, None)
        if instance_id is None or not self.health.is_up(instance_id):
            return False
        target = self._decode_by_id(instance_id)
        try:
            resumed = await target.resume_staged(request_id, prompt, generated, params)
        except Exception as err:  # replay from scratch instead
            log.warning("resume of %s on its staged KV failed: %r", request_id, err)
            return False
        if resumed:
            await self._accepted(request_id, target)
        return resumed

    async def _resume_handoff(
        self, request_id: str, prompt: list[int], generated: list[int], params: Any
    ) -> bool:
        """Resume on a decode instance from the request's prefill hand-off KV, which the
        controller keeps until the request ends (as LMCache and Mooncake keep KV outside the
        engine): only the tokens streamed after the hand-off are prefilled, not the prompt."""
        kept = self._handoffs.get(request_id)
        if kept is None:
            return False
        payload, num_kv_tokens = kept
        num_tokens = len(prompt) + len(generated)
        recompute = num_tokens - num_kv_tokens
        self._local_replay_tokens += recompute
        try:
            new = NewRequest(request_id, num_tokens, None)
            await self._place(new, lambda dst: dst.resume_from(payload, prompt, generated, params))
        except NoInstanceError:
            raise
        except Exception as err:  # replay from scratch instead
            log.warning("resume of %s on its hand-off KV failed: %r", request_id, err)
            self._forget_handoff(request_id)
            return False
        finally:
            self._local_replay_tokens -= recompute
        return True

    def _keep_handoff(self, request_id: str, payload: Any, num_kv_tokens: int) -> None:
        """Keep a hand-off's KV (newest last) within `failover_kv_tokens`; the oldest requests,
        which have streamed the most and so gain the least from it, are dropped first."""
        self._forget_handoff(request_id)
        if num_kv_tokens > self.failover_kv_tokens:
            return
        self._handoffs[request_id] = (payload, num_kv_tokens)
        self._handoff_tokens += num_kv_tokens
        while self._handoff_tokens > self.failover_kv_tokens:
            _, (_, dropped) = self._handoffs.popitem(last=False)
            self._handoff_tokens -= dropped

    def _forget_handoff(self, request_id: str) -> None:
        kept = self._handoffs.pop(request_id, None)
        if kept is not None:
            self._handoff_tokens -= kept[1]

    async def _prefill_and_place(
        self, request_id: str, prompt: list[int], params: Any, generated: list[int] | None
    ) -> None:
        prefilled = await self._prefill(request_id, prompt, params, generated)
        if prefilled is None or prefilled[0].finished:
            return
        handoff, payload = prefilled
        num_context_tokens = handoff.num_prompt_tokens + len(generated or ())
        new = NewRequest(request_id, num_context_tokens, handoff.predicted_output_tokens)
        self._keep_handoff(request_id, payload, num_context_tokens)
        try:
            await self._place(new, lambda target: target.import_request(payload))
        except BaseException:
            self._forget_handoff(request_id)
            raise

    async def _prefill(
        self, request_id: str, prompt: list[int], params: Any, generated: list[int] | None
    ) -> tuple[Any, Any] | None:
        while request_id not in self._aborted:
            live = [h for h in self.prefill if self.health.is_up(h.instance_id)]
            if not live:
                raise NoInstanceError("no prefill instance is up")
            queued = [self._prefill_queued_tokens.get(h.instance_id, 0) for h in live]
            handle = live[self.placer.choose(queued)]
            num_tokens = len(prompt) + len(generated or ())
            self._prefill_queued_tokens[handle.instance_id] = (
                queued[live.index(handle)] + num_tokens
            )
            try:
                return await handle.prefill(request_id, prompt, params, generated)
            except InstanceDiedError as err:
                self._declare_dead(handle, str(err), kill=False)  # then prefill elsewhere
            except InstanceUnavailableError as err:  # maybe never ran: prefill elsewhere
                log.warning("prefill of %s: %s", request_id, err)
            except Exception:
                if request_id in self._aborted:  # the abort ended the prefill call
                    return None
                raise
            finally:  # sent and done (or failed): no longer queued there
                self._prefill_queued_tokens[handle.instance_id] -= num_tokens
        return None

    async def _place(
        self, new: NewRequest, accept: Callable[[InstanceHandle], Awaitable[bool]]
    ) -> None:
        """Dispatch until an instance accepts, bounded by `place_timeout_s`; abort is checked
        before and after each try (an abort that raced the import is sent to its winner)."""
        request_id = new.request_id
        deadline_s = time.monotonic() + self.place_timeout_s
        try:
            while request_id not in self._aborted:
                if time.monotonic() > deadline_s:
                    raise NoInstanceError(
                        f"no decode instance had room for {request_id} in {self.place_timeout_s} s"
                    )
                target = self._decode_by_id(self._dispatch(new))
                try:
                    accepted = await accept(target)
                except InstanceDiedError as err:
                    self._declare_dead(target, str(err), kill=False)
                    continue
                except InstanceUnavailableError as err:  # it may have landed: drop it there
                    log.warning("placing %s: %s", request_id, err)
                    with contextlib.suppress(Exception):
                        await target.release(request_id)
                    continue
                if accepted:
                    await self._accepted(request_id, target)
                    return
                await asyncio.sleep(IMPORT_RETRY_S)
        finally:
            entry = self._incoming.get(request_id)
            if entry is not None and entry.placed_at_s is None:
                del self._incoming[request_id]

    async def _accepted(self, request_id: str, target: InstanceHandle) -> None:
        """`target` took the request: record it, refresh its snapshot (its worker reports the
        request from now on), and drop it there if it was aborted while being imported."""
        self._placed(request_id, target.instance_id)
        await self._poll([target])
        if request_id in self._aborted:
            await self._abort_on([target], request_id)

    def _placed(self, request_id: str, instance_id: int) -> None:
        now = time.monotonic()
        self._placement[request_id] = (instance_id, now)
        entry = self._incoming.get(request_id)
        if entry is not None and entry.instance_id == instance_id:
            entry.placed_at_s = now  # listed until a poll that started after this

    def _dispatch(self, new: NewRequest) -> int:
        """The policy's choice over the latest snapshots; the request becomes that instance's
        `incoming` entry (one entry per request: a retry moves it)."""
        snapshots = self.decode_snapshots()
        if not snapshots:
            raise NoInstanceError("no decode instance is up")
        instance_id = self.policy.dispatch(snapshots, new)
        num_tokens = new.num_prompt_tokens + 1
        load = RequestLoad(new.request_id, num_tokens, 1, new.predicted_output_tokens)
        self._incoming[new.request_id] = _Incoming(instance_id, load)
        return instance_id

    async def _poll_decode(self) -> None:
        await self._poll(self.decode)

    def _decode_by_id(self, instance_id: int) -> InstanceHandle:
        for handle in self.decode:
            if handle.instance_id == instance_id:
                return handle
        raise KeyError(f"policy chose unknown decode instance {instance_id}")

    async def abort(self, request_id: str) -> None:
        """Drop the request wherever it is, and keep it from being dispatched or moved later."""
        self._aborted[request_id] = None
        while len(self._aborted) > MAX_REMEMBERED_ABORTS:
            self._aborted.pop(next(iter(self._aborted)))
        self._placement.pop(request_id, None)
        self._kept.pop(request_id, None)  # every instance drops staged KV on abort
        self._forget_handoff(request_id)
        await self._abort_on([*self.prefill, *self.decode], request_id)

    async def _abort_on(self, handles: list[InstanceHandle], request_id: str) -> None:
        live = [h for h in handles if self.health.is_up(h.instance_id)]
        results = await asyncio.gather(*(h.abort(request_id) for h in live), return_exceptions=True)
        for handle, result in zip(live, results, strict=True):
            if isinstance(result, BaseException):  # a dead one holds nothing
                log.warning("abort of %s on %s failed: %r", request_id, handle.instance_id, result)

    # --- failures ------------------------------------------------------------------------
    async def _watch(self, handle: InstanceHandle) -> None:
        """Have the instance's process open its liveness connection (cluster/liveness.py):
        its death is then noticed in milliseconds, not when Ray reports it."""
        if self._liveness_address is None:
            return
        try:
            await handle.watch_liveness(*self._liveness_address)
        except Exception as err:  # Ray and the snapshot timeout still catch its death
            log.warning("instance %s: no liveness connection: %r", handle.instance_id, err)

    def _process_exited(self, instance_id: int) -> None:
        if self._stopping:
            return
        for handle in [*self.prefill, *self.decode]:
            if handle.instance_id == instance_id:
                self._declare_dead(handle, "its process exited (liveness connection)", False)

    def _declare_dead(self, handle: InstanceHandle, reason: str, kill: bool) -> None:
        if self.health.is_up(handle.instance_id):
            self._polls.pop(handle.instance_id, None)
            role = "decode" if handle in self.decode else "prefill"
            self.health.fail(handle, role, reason, kill)

    async def _fail_over(self, instance_id: int) -> list[str]:
        """Requests placed on a dead decode instance, once migrations touching it settled
        (a migration from it rolls back; one to it resumes on its source)."""
        await asyncio.gather(*self._migration_tasks, return_exceptions=True)
        lost = [rid for rid, (inst, _) in self._placement.items() if inst == instance_id]
        for request_id in lost:
            del self._placement[request_id]
        for request_id, entry in list(self._incoming.items()):
            if entry.instance_id == instance_id and entry.placed_at_s is not None:
                del self._incoming[request_id]
        return [rid for rid in lost if rid not in self._aborted]

    async def wait_lost(self, timeout_s: float) -> list[str]:
        """Requests lost with a dead decode instance since the last call (the server resumes
        each with `resume`); waits up to `timeout_s` for the first."""
        return await self.health.wait_lost(timeout_s)

    # --- migration -----------------------------------------------------------------------
    def _launch(self, decisions: list[MigrationDecision]) -> None:
        for decision in decisions:
            busy = {decision.src_instance_id, decision.dst_instance_id} & self._migrating
            if busy or len(self._migrating) >= 2 * self.max_concurrent_migrations:
                continue
            self._migrating |= {decision.src_instance_id, decision.dst_instance_id}
            task = asyncio.create_task(self._run_migration(decision))
            self._migration_tasks.add(task)
            task.add_done_callback(self._migration_tasks.discard)

    async def migrate(self, request_id: str, dst_instance_id: int | None = None) -> MigrationRecord:
        """Move `request_id` now (the controller API tests and operators use)."""
        await self._poll_decode()
        src_id = self._locate(request_id)
        if dst_instance_id is None:
            dst_instance_id = next(
                s.instance_id for s in self.decode_snapshots() if s.instance_id != src_id
            )
        self._migrating |= {src_id, dst_instance_id}
        task = asyncio.create_task(
            self._run_migration(MigrationDecision(request_id, src_id, dst_instance_id))
        )
        self._migration_tasks.add(task)
        task.add_done_callback(self._migration_tasks.discard)
        return await task

    async def locate(self, request_id: str) -> int:
        """The decode instance running `request_id` now (KeyError if none)."""
        await self._poll_decode()
        return self._locate(request_id)

    def _locate(self, request_id: str) -> int:
        for snapshot in self.decode_snapshots():
            if any(load.request_id == request_id for load in snapshot.requests):
                return snapshot.instance_id
        raise KeyError(f"request {request_id} is not running on any decode instance")

    async def _run_migration(self, decision: MigrationDecision) -> MigrationRecord:
        self._num_started += 1
        dst = self._decode_by_id(decision.dst_instance_id)
        migration = Migration(
            request_id=decision.request_id,
            src_instance_id=decision.src_instance_id,
            dst_instance_id=decision.dst_instance_id,
            src=self._decode_by_id(decision.src_instance_id),
            dst=dst,
            config=self.migration,
        )
        try:
            record = await migration.run()
        finally:
            self._migrating -= {decision.src_instance_id, decision.dst_instance_id}
        if migration.kept_on_dst:  # the failover of its dead source resumes it there
            self._kept[decision.request_id] = decision.dst_instance_id
        self._records.append(record)
        if record.status is MigrationStatus.FINISHED:
            self._placed(decision.request_id, decision.dst_instance_id)
            if decision.request_id in self._aborted:
                await self._abort_on([dst], decision.request_id)  # aborted while it moved
        return record

    def metrics(self, since: int = 0) -> ClusterMetrics:
        by_status = Counter(record.status.value for record in self._records)
        return ClusterMetrics(
            polls=tuple(self._polls[i] for i in sorted(self._polls)),
            prefill_instance_ids=tuple(h.instance_id for h in self.prefill),
            decode_instance_ids=tuple(h.instance_id for h in self.decode),
            num_migrations_started=self._num_started,
            num_migrations_by_status={s.value: by_status.get(s.value, 0) for s in MigrationStatus},
            records=tuple(self._records[since:]),
            down_instance_ids=self.health.down_ids(),
            num_failures_by_instance=dict(self.health.num_failures),
            num_restarts_by_instance=dict(self.health.num_restarts),
        )
