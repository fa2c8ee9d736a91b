"""Live migration of a decoding request between decode instances (Llumnix's multi-stage copy).

State machine: RUNNING (copying stage k while the source keeps decoding) -> final stage (the
request leaves the source's batch; only the blocks written since the last stage remain) ->
FINISHED (the request joins the destination's batch), or ABORTED_SRC (the request finished or
was preempted on the source) / ABORTED_DST (the destination ran out of blocks), both of which
roll back the destination's reservation. A stage copies the tokens written since the last
stage start; the final stage starts once at most `last_stage_blocks` blocks remain or the
stage budget is spent.
"""

from __future__ import annotations

from dataclasses import dataclass

from starserve.mechanism.migration import MigrationStatus
from starserve.sim.decode import DecodeInstance
from starserve.sim.request import RequestStatus, SimRequest


@dataclass(frozen=True, slots=True)
class MigrationLink:
    bandwidth_bytes_per_s: float
    overhead_s: float
    kv_bytes_per_token: int
    max_stages: int
    last_stage_blocks: int

    def copy_s(self, num_tokens: int) -> float:
        return num_tokens * self.kv_bytes_per_token / self.bandwidth_bytes_per_s


@dataclass(slots=True)
class Migration:
    request: SimRequest
    src: DecodeInstance
    dst: DecodeInstance
    link: MigrationLink
    status: MigrationStatus = MigrationStatus.RUNNING
    stage: int = 0
    is_final_stage: bool = False
    num_copied_tokens: int = 0
    num_reserved_blocks: int = 0

    def _context_now(self) -> int:
        return self.request.context_at(self.src.steps_done)

    def _reserve_up_to(self, num_tokens: int) -> bool:
        """can_reserve/reserve on the destination for a context of `num_tokens`."""
        needed = self.dst.blocks_for(num_tokens) - self.num_reserved_blocks
        seats = 0 if self.num_reserved_blocks else 1
        if needed > 0 and not self.dst.can_reserve(needed, seats):
            return False
        if needed > 0 or seats:
            self.dst.reserve(max(needed, 0), seats)
            self.num_reserved_blocks += max(needed, 0)
        return True

    def _abort(self, status: MigrationStatus) -> None:
        if self.stage:
            self.dst.release(self.num_reserved_blocks, 1)
        self.num_reserved_blocks = 0
        self.status = status
        self.request.migrating = False

    def start(self) -> float | None:
        """Reserve on the destination and begin stage 1; its duration, or None if aborted.
        The source must be synced to the current step boundary."""
        if (
            self.request.status is not RequestStatus.RUNNING
            or self.request.instance_id != self.src.instance_id
        ):
            self._abort(MigrationStatus.ABORTED_SRC)
            return None
        context = self._context_now()
        if not self._reserve_up_to(context):
            self.status = MigrationStatus.ABORTED_DST
            return None
        self.request.migrating = True
        self.stage = 1
        self.num_copied_tokens = context
        return self.link.overhead_s + self.link.copy_s(context)

    def on_stage_end(self) -> float | None:
        """A non-final stage ended (source synced): next stage's duration, None if aborted.
        Sets `is_final_stage` when the next stage stalls the request."""
        request = self.request
        if (
            request.status is not RequestStatus.RUNNING
            or request.instance_id != self.src.instance_id
        ):
            self._abort(MigrationStatus.ABORTED_SRC)
            return None
        context = self._context_now()
        new_tokens = context - self.num_copied_tokens
        if not self._reserve_up_to(context):
            self._abort(MigrationStatus.ABORTED_DST)
            return None
        final = (
            self.stage >= self.link.max_stages
            or self.dst.blocks_for(new_tokens) - 1 <= self.link.last_stage_blocks
        )
        self.stage += 1
        self.num_copied_tokens = context
        if final:
            self.is_final_stage = True
            self.src.leave(request)
            request.status = RequestStatus.MIGRATION_STALLED
        return self.link.copy_s(new_tokens)

    def finish(self) -> None:
        """The final stage ended (destination synced): the request decodes on the destination."""
        self.dst.release(self.num_reserved_blocks, 1)
        self.num_reserved_blocks = 0
        self.request.migrating = False
        self.request.num_migrations += 1
        self.dst.join(self.request)
        self.status = MigrationStatus.FINISHED
