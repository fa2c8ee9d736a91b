"""Plain records that cross actor boundaries in the cluster (no Ray here)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from starserve.policy.types import InstanceSnapshot


@dataclass(frozen=True, slots=True)
class OutputChunk:
    """Tokens an instance produced for one request, tagged with their position in the output.

    `first_token_index` lets the receiver reassemble a stream whose pieces come from different
    instances (prefill, then one or more decode instances) without repeating or skipping.
    """

    request_id: str
    first_token_index: int  # index in the request's generated tokens of token_ids[0]
    token_ids: tuple[int, ...]
    text: str
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    instance_id: int  # who produced it (for metrics and tests)
    error: str | None = None  # set when the request failed inside the cluster


class MigrationStatus(enum.Enum):
    """Where a migration ended; RUNNING only while it is in flight."""

    RUNNING = "running"
    FINISHED = "finished"  # committed on the destination, freed on the source
    ABORTED_SRC = "aborted_src"  # the request finished or vanished on the source mid-copy
    ABORTED_DST = "aborted_dst"  # the destination lacked room, failed or died

    @property
    def is_aborted(self) -> bool:
        return self in (MigrationStatus.ABORTED_SRC, MigrationStatus.ABORTED_DST)


@dataclass(frozen=True, slots=True)
class StageInfo:
    """What the source reports about one exported stage (the KV payload travels separately)."""

    stage: int
    num_tokens: int  # prompt + generated tokens the request holds at this stage
    num_kv_blocks: int  # blocks carried by this stage's payload


@dataclass(frozen=True, slots=True)
class MigrationRecord:
    """The outcome of one migration, for metrics and tests."""

    request_id: str
    src_instance_id: int
    dst_instance_id: int
    status: MigrationStatus
    num_stages: int
    pause_s: float  # time the request was paused (final stage), 0 when never paused
    started_at_s: float  # wall clock (time.time()), comparable across local processes
    ended_at_s: float
    reason: str = ""  # why it aborted


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    instance_id: int
    engine_overrides: dict[str, Any] = field(default_factory=dict)  # EngineConfig fields
    predictor_path: str | None = None
    use_predictor: bool = True
    idle_wait_s: float = 0.05
    predictor_refresh: bool = False  # online refit from finished requests (predictor.refresh)


@dataclass(frozen=True, slots=True)
class Handoff:
    """What a prefill instance reports after the first token (the KV snapshot travels apart)."""

    request_id: str
    num_prompt_tokens: int
    finished: bool  # the first token already ended it: nothing to hand off
    predicted_output_tokens: float | None


@dataclass(frozen=True, slots=True)
class InstancePoll:
    snapshot: InstanceSnapshot
    num_running: int
    num_preemptions_total: int
    num_steps: int
    predictor_live_mae_tokens: float | None = None  # with predictor refresh on
