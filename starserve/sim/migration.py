"""Live migration of a decoding request between decode instances (Llumnix's multi-stage copy).

State machine: RUNNING (copying stage k while the source keeps decoding) -> final stage (the
request leaves the source's batch; only the blocks written since the last stage remain) ->
FINISHED (the request joins the destination's batch), or ABORTED_SRC (the request finished or
was preempted on the source) / ABORTED_DST (the destination ran out of blocks), both of which
roll back the destination's reservation. A stage copies the tokens written since the last
stage start. Which stage comes next is the shared rule
`starserve.mechanism.migration.next_stage`, the one the live cluster's driver follows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starserve.mechanism.migration import (
    MigrationConfig,
    MigrationStatus,
    StageAction,
    abort_status,
    next_stage,
    num_stage_blocks,
)
from starserve.sim.decode import DecodeInstance
from starserve.sim.request import RequestStatus, SimRequest


@dataclass(frozen=True, slots=True)
class MigrationLink:
    bandwidth_bytes_per_s: float
    overhead_s: float
    kv_bytes_per_token: int
    config: MigrationConfig

    def copy_s(self, num_tokens: int) -> float:
        return num_tokens * self.kv_bytes_per_token / self.bandwidth_bytes_per_s


@dataclass(slots=True)
class Migration:
    request: SimRequest
    src: DecodeInstance
    dst: DecodeInstance
    link: MigrationLink
    status: MigrationStatus = MigrationStatus.RUNNING
    stage: int = 0  # stages begun
    is_final_stage: bool = False
    num_copied_tokens: int = 0
    num_reserved_blocks: int = 0
    num_last_stage_blocks: int = 0  # KV blocks the latest stage carries
    actions: list[StageAction] = field(default_factory=list)  # each stage's, in order

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
        if self.stage:  # stage 1 began with a reservation (a seat at least)
            self.dst.release(self.num_reserved_blocks, 1)
        self.dst.importing.pop(self.request.request_id, None)
        self.num_reserved_blocks = 0
        self.status = status
        self.request.migrating = False

    def _next_action(self) -> tuple[StageAction, int]:
        """Ask the shared stage rule, reserving on the destination for the context now; the
        action and that context."""
        request = self.request
        running = (
            request.status is RequestStatus.RUNNING and request.instance_id == self.src.instance_id
        )
        context = self._context_now() if running else 0
        has_room = running and self._reserve_up_to(context)
        action = next_stage(
            self.stage, self.num_last_stage_blocks, self.link.config, running, has_room
        )
        if action is StageAction.ABORT:
            self._abort(abort_status(running))
        return action, context

    def _begin_stage(self, action: StageAction, context: int) -> float:
        """Start a copy or the final stage carrying the tokens since the last one; its
        copy time."""
        self.actions.append(action)
        new_tokens = context - self.num_copied_tokens
        self.num_last_stage_blocks = num_stage_blocks(
            context, self.num_copied_tokens, self.dst.block_size
        )
        self.stage += 1
        self.num_copied_tokens = context
        self.dst.importing[self.request.request_id] = (self.request, context)
        if action is StageAction.FINAL:
            self.is_final_stage = True
            self.src.leave(self.request)
            self.request.status = RequestStatus.MIGRATION_STALLED
        return self.link.copy_s(new_tokens)

    def start(self) -> float | None:
        """Reserve on the destination and begin stage 1; its duration, or None if aborted.
        The source must be synced to the current step boundary."""
        action, context = self._next_action()
        if action is StageAction.ABORT:
            return None
        self.request.migrating = True
        return self.link.overhead_s + self._begin_stage(action, context)

    def on_stage_end(self) -> float | None:
        """A copy stage ended (source synced): the next stage's duration, None if aborted.
        Sets `is_final_stage` when the next stage stalls the request."""
        action, context = self._next_action()
        if action is StageAction.ABORT:
            return None
        return self._begin_stage(action, context)

    def finish(self) -> None:
        """The final stage ended (destination synced): the request decodes on the destination."""
        self.dst.release(self.num_reserved_blocks, 1)
        self.dst.importing.pop(self.request.request_id, None)
        self.num_reserved_blocks = 0
        self.request.migrating = False
        self.request.num_migrations += 1
        self.dst.join(self.request, by_arrival=True)
        self.status = MigrationStatus.FINISHED
