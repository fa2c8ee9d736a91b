"""Plain records that cross actor boundaries in the cluster (no Ray here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starserve.mechanism.migration import MigrationStatus
from starserve.mechanism.prediction import Prediction
from starserve.policy.types import InstanceSnapshot


class InstanceDiedError(RuntimeError):
    """An instance's process is gone (Ray actor death): what the adapters raise instead of
    Ray's own errors, so the controller matches it by type without importing Ray."""

    def __init__(self, instance_id: int, detail: str = ""):
        super().__init__(f"instance {instance_id} died{': ' + detail if detail else ''}")
        self.instance_id = instance_id


class InstanceUnavailableError(RuntimeError):
    """A call did not reach a live instance (Ray could not say it finished); not a death."""


class NoInstanceError(RuntimeError):
    """No live instance of a role the request needs (or none had room in time): the server
    answers 503. Raised by the controller; crosses Ray as this type."""


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
    predicted_output_tokens: float | None  # the prediction below, aged and capped for dispatch
    prediction: Prediction | None = None  # travels on with the KV (KvTransfer)


@dataclass(frozen=True, slots=True)
class KvTransfer:
    """What moves a request's state between instances: the engine's KV snapshot and the
    request's latest prediction, so the receiving instance knows it from the first step."""

    kv: Any  # starserve.engine.RequestSnapshot (or a test engine's)
    prediction: Prediction | None


@dataclass(frozen=True, slots=True)
class InstancePoll:
    snapshot: InstanceSnapshot
    num_running: int
    num_preemptions_total: int
    num_steps: int
    incarnation: int = 0  # the instance's process id: a change means it restarted (state lost)
    predictor_live_mae_tokens: float | None = None  # with predictor refresh on
