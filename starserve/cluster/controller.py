"""The controller: polls instance snapshots, dispatches through the shared policies, and
drives migrations. A plain class; `starserve.cluster.launch` runs it as an async Ray actor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from starserve.cluster.handles import InstanceHandle
from starserve.cluster.migration import Migration, MigrationConfig
from starserve.cluster.policies import ControllerPolicy
from starserve.cluster.types import InstancePoll, MigrationRecord, MigrationStatus
from starserve.policy.types import InstanceSnapshot, MigrationDecision, NewRequest, RequestLoad

log = logging.getLogger(__name__)

MAX_REMEMBERED_ABORTS = 10_000
IMPORT_RETRY_S = 0.05  # a full destination is retried (re-dispatched) after this long


@dataclass(frozen=True, slots=True)
class ClusterMetrics:
    """What the server exports: latest polls, migration counters, finished migration records."""

    polls: tuple[InstancePoll, ...]
    prefill_instance_ids: tuple[int, ...]
    decode_instance_ids: tuple[int, ...]
    num_migrations_started: int
    num_migrations_by_status: dict[str, int]
    records: tuple[MigrationRecord, ...]  # records[since:] of the request


@dataclass(slots=True)
class Controller:
    prefill: list[InstanceHandle]
    decode: list[InstanceHandle]
    policy: ControllerPolicy
    poll_interval_s: float = 0.05
    migration: MigrationConfig = field(default_factory=MigrationConfig)
    max_concurrent_migrations: int = 1
    auto_migrate: bool = True
    _polls: dict[int, InstancePoll] = field(default_factory=dict)
    _migrating: set[int] = field(default_factory=set)  # instance ids busy with a migration
    _records: list[MigrationRecord] = field(default_factory=list)
    _aborted: dict[str, None] = field(default_factory=dict)  # insertion-ordered set
    _num_started: int = 0
    _prefill_rr: Any = None
    _task: asyncio.Task[None] | None = None
    _migration_tasks: set[asyncio.Task[MigrationRecord]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._prefill_rr = itertools.cycle(range(len(self.prefill)))

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        await self._poll_once()
        self._task = asyncio.create_task(self._poll_loop())

    async def stop(self) -> None:
        """Stop polling; migrations in flight finish (or roll back) first."""
        if self._task is not None:
            self._task.cancel()
        await asyncio.gather(*self._migration_tasks, return_exceptions=True)

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
        """Refresh snapshots; an instance that does not answer drops out of the policies'
        view (nothing is dispatched or migrated to it) until it answers again."""
        results = await asyncio.gather(*(h.poll() for h in handles), return_exceptions=True)
        for handle, result in zip(handles, results, strict=True):
            if isinstance(result, BaseException):
                if self._polls.pop(handle.instance_id, None) is not None:
                    log.warning("instance %s does not answer: %r", handle.instance_id, result)
            else:
                self._polls[handle.instance_id] = result

    def decode_snapshots(self) -> list[InstanceSnapshot]:
        return [
            dataclasses.replace(
                self._polls[h.instance_id].snapshot, is_migrating=h.instance_id in self._migrating
            )
            for h in self.decode
            if h.instance_id in self._polls
        ]

    # --- serving -------------------------------------------------------------------------
    async def submit(self, request_id: str, prompt: list[int], params: Any) -> None:
        """Prefill, then hand the request to the decode instance the policy picks."""
        prefill = self.prefill[next(self._prefill_rr)]
        handoff, payload = await prefill.prefill(request_id, prompt, params)
        if handoff.finished or request_id in self._aborted:
            return
        new = NewRequest(request_id, handoff.num_prompt_tokens, handoff.predicted_output_tokens)
        while True:
            target = self._decode_by_id(self._dispatch(new))
            try:
                await target.import_request(payload)
                return
            except Exception as err:  # EngineFullError crosses Ray wrapped: match by name
                if "EngineFullError" not in f"{type(err).__name__} {err}":
                    raise
            await asyncio.sleep(IMPORT_RETRY_S)

    def _dispatch(self, new: NewRequest) -> int:
        """The policy's choice over the latest snapshots; until the next poll, that instance's
        snapshot lists the request as incoming (dispatched, not decoding yet), so a burst of
        arrivals does not all land on one instance."""
        instance_id = self.policy.dispatch(self.decode_snapshots(), new)
        poll = self._polls[instance_id]
        snap = poll.snapshot
        num_tokens = new.num_prompt_tokens + 1
        load = RequestLoad(new.request_id, num_tokens, 1, new.predicted_output_tokens)
        patched = dataclasses.replace(
            snap,
            incoming=(*snap.incoming, load),
            num_waiting=snap.num_waiting + 1,
            num_waiting_blocks=snap.num_waiting_blocks + -(-num_tokens // snap.block_size),
        )
        self._polls[instance_id] = dataclasses.replace(poll, snapshot=patched)
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
        await asyncio.gather(*(h.abort(request_id) for h in [*self.prefill, *self.decode]))

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
            dst_instance_id = next(h.instance_id for h in self.decode if h.instance_id != src_id)
        self._migrating |= {src_id, dst_instance_id}
        return await self._run_migration(MigrationDecision(request_id, src_id, dst_instance_id))

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
        self._records.append(record)
        if record.status is MigrationStatus.FINISHED and decision.request_id in self._aborted:
            await dst.abort(decision.request_id)  # aborted while it moved
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
        )
