"""Live migration's shared contract: its status, its settings, and the stage rule.

Both drivers follow the same rule: the Ray driver (`starserve.cluster.migration`), which moves
real KV between engines, and the simulated one (`starserve.sim.migration`), which times the
copies. A migration is a sequence of stages. A copy stage sends KV while the request keeps
decoding on the source (the first sends every block, later ones only the blocks written or
still incomplete since the previous stage); the final stage pauses the request, sends the
rest and commits it on the destination. `next_stage` decides, before each stage, which one
comes next:

- abort when the request no longer runs on the source or the destination has no room;
- final once `max_stages - 1` copy stages are done (`max_stages` counts every stage, the final
  one included, Llumnix's default 3; `max_stages = 1` is stop-and-copy);
- final once the last copy stage carried at most `final_stage_max_blocks` blocks (the
  request then generated little during that copy, so the pause will be short);
- copy otherwise (and always first, when `max_stages >= 2`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class MigrationStatus(enum.Enum):
    """Where a migration ended; RUNNING only while it is in flight."""

    RUNNING = "running"
    FINISHED = "finished"  # committed on the destination, freed on the source
    ABORTED_SRC = "aborted_src"  # the request finished or vanished on the source mid-copy
    ABORTED_DST = "aborted_dst"  # the destination lacked room, failed or died

    @property
    def is_aborted(self) -> bool:
        return self in (MigrationStatus.ABORTED_SRC, MigrationStatus.ABORTED_DST)


class StageAction(enum.Enum):
    """What the next stage of a migration does."""

    COPY = "copy"  # send KV while the request keeps decoding on the source
    FINAL = "final"  # pause the request, send the rest, commit on the destination
    ABORT = "abort"  # roll back: the request stays (or resumes) on the source


@dataclass(frozen=True, slots=True)
class MigrationConfig:
    """How a migration stages its copies (shared by the live and the simulated cluster)."""

    max_stages: int = 3  # every stage, the final paused one included (Llumnix's default)
    final_stage_max_blocks: int = 16  # go final once a copy stage carried at most this many
    reserve_headroom_tokens: int = 64  # growth the destination reserves for while copies run
    # Deadlines of the live driver (None = none): past one the migration aborts and the request
    # goes on at the source, whose blocks it still holds. The pause deadline bounds the paused
    # final stage. The simulator's copies take modelled time and need none.
    stage_timeout_s: float | None = 10.0
    pause_timeout_s: float | None = 2.0

    def __post_init__(self) -> None:
        if self.max_stages < 1:
            raise ValueError(f"max_stages must be >= 1, got {self.max_stages}")
        if self.final_stage_max_blocks < 0 or self.reserve_headroom_tokens < 0:
            raise ValueError("final_stage_max_blocks and reserve_headroom_tokens must be >= 0")


def next_stage(
    num_stages_done: int,
    num_last_stage_blocks: int,
    config: MigrationConfig,
    source_running: bool = True,
    destination_has_room: bool = True,
) -> StageAction:
    """The next stage after `num_stages_done` copy stages, the last of which carried
    `num_last_stage_blocks` KV blocks (ignored before the first stage). See the module doc."""
    if not source_running or not destination_has_room:
        return StageAction.ABORT
    if num_stages_done >= config.max_stages - 1:
        return StageAction.FINAL
    if num_stages_done == 0:
        return StageAction.COPY
    if num_last_stage_blocks <= config.final_stage_max_blocks:
        return StageAction.FINAL
    return StageAction.COPY


def abort_status(source_running: bool) -> MigrationStatus:
    """Which side an ABORT of `next_stage` blames (the source first: nothing left to move)."""
    return MigrationStatus.ABORTED_DST if source_running else MigrationStatus.ABORTED_SRC


def num_stage_blocks(num_tokens_now: int, num_tokens_before: int, block_size: int) -> int:
    """Blocks a stage carries: from the block incomplete at the previous stage (or the first,
    when `num_tokens_before` is 0) through the last one holding tokens now."""
    return -(-num_tokens_now // block_size) - num_tokens_before // block_size
