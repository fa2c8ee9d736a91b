"""Llumnix-style live migration of one decoding request, as an explicit state machine.

Stages: the source exports its KV blocks while it keeps decoding (stage 0 = everything, later
stages = only blocks that were incomplete at the previous export) and the destination copies
them into a reservation. The final stage pauses the request on the source, sends the rest,
commits on the destination and frees the source. Which stage comes next is the shared rule
`starserve.mechanism.migration.next_stage` (the simulator's driver follows it too). Every
abort path rolls back: the destination frees its reservation and the source resumes the
request, so it finishes there with nothing lost. One exception: when the source dies after
a stage reached the destination, the destination keeps that KV (`kept_on_dst`) and the
failover resumes the request there, prefilling only the tokens after the stage.

The machine only sees the two small async protocols below; the cluster adapts Ray actors to
them and tests adapt in-process workers, so this module imports no Ray.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from starserve.cluster.types import InstanceDiedError, MigrationRecord, StageInfo
from starserve.mechanism.migration import MigrationConfig, MigrationStatus, StageAction, next_stage

log = logging.getLogger(__name__)


class MigrationSource(Protocol):
    """The instance a request leaves."""

    async def export_stage(
        self, request_id: str, since_stage: int | None
    ) -> tuple[StageInfo, Any] | None:
        """Export KV (all when `since_stage` is None); None when the request is no longer
        running there (finished or aborted). Never pauses or frees."""
        ...

    async def pause_and_export(
        self, request_id: str, since_stage: int | None
    ) -> tuple[StageInfo, Any] | None:
        """Stop scheduling the request and export what `since_stage` lacks, in one call (the
        request waits for no engine step in between); None when it already finished."""
        ...

    async def resume(self, request_id: str) -> None:
        """Undo `pause` (rollback)."""
        ...

    async def release(self, request_id: str) -> None:
        """Free the request's blocks silently: it now lives on the destination."""
        ...


class MigrationDestination(Protocol):
    """The instance a request moves to."""

    async def reserve(self, request_id: str, num_tokens: int) -> bool:
        """Reserve room for `num_tokens` tokens of KV; False = no room (nothing reserved)."""
        ...

    async def write_stage(self, payload: Any) -> None:
        """Copy one exported stage's blocks into the reservation."""
        ...

    async def commit(self, payload: Any) -> None:
        """Copy the final stage's blocks, adopt the request and start decoding it."""
        ...

    async def grow_reservation(self, request_id: str, num_tokens: int) -> bool:
        """Make the reservation hold `num_tokens` positions; False = no room (asked before the
        source pauses, so a destination that cannot admit refuses while nothing waits)."""
        ...

    async def abort_import(self, request_id: str) -> None:
        """Free whatever `reserve`/`write_stage` took, or drop the request silently if a
        commit that timed out landed after all (rollback)."""
        ...


class _Abort(Exception):
    def __init__(self, status: MigrationStatus, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class Migration:
    """One migration in flight; `run()` drives it to FINISHED or an ABORTED_* status."""

    request_id: str
    src_instance_id: int
    dst_instance_id: int
    src: MigrationSource
    dst: MigrationDestination
    config: MigrationConfig
    status: MigrationStatus = MigrationStatus.RUNNING
    num_stages: int = 0
    reserved: bool = False
    paused: bool = False
    staged: bool = False  # a stage's KV is written on the destination
    kept_on_dst: bool = False  # the source died after a stage: the destination keeps its KV
    pause_s: float = 0.0
    actions: list[StageAction] = field(default_factory=list)  # each stage's, in order

    async def run(self) -> MigrationRecord:
        reason = ""
        started_at_s = time.time()
        try:
            await self._copy_stages()
            self.status = MigrationStatus.FINISHED
        except _Abort as abort:
            self.status, reason = abort.status, abort.reason
            await self._rollback()
            log.info("migration of %s aborted (%s): %s", self.request_id, self.status, reason)
        except asyncio.CancelledError:  # the controller is stopping: leave nothing half-moved
            await asyncio.shield(self._rollback())
            raise
        return MigrationRecord(
            request_id=self.request_id,
            src_instance_id=self.src_instance_id,
            dst_instance_id=self.dst_instance_id,
            status=self.status,
            num_stages=self.num_stages,
            pause_s=self.pause_s,
            started_at_s=started_at_s,
            ended_at_s=time.time(),
            reason=reason,
        )

    async def _copy_stages(self) -> None:
        last: StageInfo | None = None
        while True:
            blocks = 0 if last is None else last.num_kv_blocks
            action = next_stage(self.num_stages, blocks, self.config)
            self.actions.append(action)
            if action is not StageAction.COPY:
                break
            info, payload = await self._export(None if last is None else last.stage)
            if last is None:
                await self._reserve(info)
            await self._dst(self.dst.write_stage(payload))
            self.staged = True
            last = info
        await self._final_stage(last)

    async def _reserve(self, info: StageInfo) -> None:
        if not await self._dst(self.dst.reserve(self.request_id, self._reserve_tokens(info))):
            raise _Abort(MigrationStatus.ABORTED_DST, "destination has no room")
        self.reserved = True

    async def _final_stage(self, last: StageInfo | None) -> None:
        if last is not None:  # room for what the copies left out, asked before the pause
            room = self._reserve_tokens(last)
            if not await self._dst(self.dst.grow_reservation(self.request_id, room)):
                raise _Abort(MigrationStatus.ABORTED_DST, "destination has no room to commit")
        self.paused = True  # from here a rollback resumes it (pausing may land even on timeout)
        since = None if last is None else last.stage
        final = await self._src(self.src.pause_and_export(self.request_id, since))
        if final is None:
            raise _Abort(MigrationStatus.ABORTED_SRC, "request finished on the source")
        self.num_stages += 1
        paused_at = time.perf_counter()
        if not self.reserved:  # stop-and-copy: nothing was copied before the pause
            await self._reserve(final[0])
        await self._dst(self.dst.commit(final[1]), self.config.pause_timeout_s)
        self.pause_s = time.perf_counter() - paused_at
        self.paused = False  # the destination owns it now; never resume on the source
        try:
            await self.src.release(self.request_id)
        except Exception as err:  # the request lives on; only the source's blocks leak
            log.warning("release of %s on source failed: %r", self.request_id, err)

    def _reserve_tokens(self, info: StageInfo) -> int:
        return info.num_tokens + self.config.reserve_headroom_tokens

    async def _export(self, since_stage: int | None) -> tuple[StageInfo, Any]:
        exported = await self._src(self.src.export_stage(self.request_id, since_stage))
        if exported is None:
            raise _Abort(MigrationStatus.ABORTED_SRC, "request no longer running on the source")
        self.num_stages += 1
        return exported

    async def _src(self, call: Any) -> Any:
        try:
            return await asyncio.wait_for(call, self.config.stage_timeout_s)
        except TimeoutError:
            raise _Abort(MigrationStatus.ABORTED_SRC, "source missed its deadline") from None
        except InstanceDiedError as err:  # failover resumes it from the staged KV, if any
            self.kept_on_dst = self.staged
            raise _Abort(MigrationStatus.ABORTED_SRC, f"source died: {err}") from err
        except Exception as err:  # the source failed: the request cannot move
            raise _Abort(MigrationStatus.ABORTED_SRC, f"source failed: {err!r}") from err

    async def _dst(self, call: Any, timeout_s: float | None = None) -> Any:
        try:
            return await asyncio.wait_for(call, timeout_s or self.config.stage_timeout_s)
        except TimeoutError:
            raise _Abort(MigrationStatus.ABORTED_DST, "destination missed its deadline") from None
        except Exception as err:  # the destination failed or died: keep it on the source
            raise _Abort(MigrationStatus.ABORTED_DST, f"destination failed: {err!r}") from err

    async def _rollback(self) -> None:
        if self.reserved and not self.kept_on_dst:
            try:
                await self.dst.abort_import(self.request_id)
            except Exception as err:  # a dead destination holds nothing to free
                log.warning("abort on destination %s failed: %r", self.dst_instance_id, err)
        if self.paused:
            try:
                await self.src.resume(self.request_id)
            except Exception as err:  # the source died: failover resumes the request
                log.warning("resume on source %s failed: %r", self.src_instance_id, err)
            self.paused = False
