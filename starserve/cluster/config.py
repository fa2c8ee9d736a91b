"""Settings of a serving cluster (validation only; nothing starts at construction)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from starserve.hardware import resolve_dtype
from starserve.mechanism.config import ClusterConfig as SharedClusterConfig
from starserve.policy.registry import get_policy


class ServeClusterConfig(SharedClusterConfig):
    """A live cluster: the shared cluster fields (`starserve.mechanism.config`) plus what
    real instances run on. Old keys (`num_prefill`, `num_decode`, `poll_interval_ms`) are
    still accepted."""

    policy: str = Field("star", description="dispatch + rebalancing policy (starserve.policy)")
    model: str | None = Field(None, description="GGUF file or HF folder; None = bundled SmolLM2")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="weights, activations and KV of every instance; auto = bfloat16 where the "
        "CPU multiplies it natively (starserve.hardware), float32 otherwise",
    )
    predictor: str | None = Field(None, description="predictor folder; None = the shipped one")
    use_predictor: bool = Field(True, description="False: no predictions (current load only)")
    predictor_refresh: bool = Field(
        False, description="refit the predictor online from finished requests (predictor.refresh)"
    )
    num_cpus_per_instance: float = Field(1.0, gt=0, description="Ray CPU share per instance")
    engine: dict[str, Any] = Field(
        default_factory=dict, description="extra EngineConfig fields for every instance"
    )
    max_concurrent_migrations: int = Field(1, ge=1, description="migrations in flight at once")
    migration_stage_timeout_s: float = Field(
        10.0, gt=0, description="deadline of each migration call (past it: roll back)"
    )
    migration_pause_timeout_s: float = Field(
        2.0, gt=0, description="deadline of the final stage while the request is paused"
    )
    instance_timeout_s: float = Field(
        30.0, gt=0, description="an instance without a snapshot for this long is dead"
    )
    place_timeout_s: float = Field(
        60.0, gt=0, description="a request no decode instance admits for this long gets 503"
    )
    failover_kv_tokens: int = Field(
        16_384,
        ge=0,
        description="context tokens of prefill hand-off KV the controller keeps (in Ray's "
        "object store) until each request ends, so a request whose decode instance dies is "
        "resumed on it and re-prefills only the tokens streamed since; oldest dropped first, "
        "0 = off (token replay of prompt + output)",
    )
    liveness_connections: bool = Field(
        True,
        description="each instance process holds a TCP connection to the controller, so its "
        "death is seen when the kernel closes it (milliseconds) rather than when Ray reports "
        "it (0.3-1.2 s); False: Ray and instance_timeout_s only",
    )
    instance_max_restarts: int = Field(
        3, ge=0, description="times Ray restarts a crashed instance (then it stays down)"
    )

    @property
    def num_prefill(self) -> int:
        return self.num_prefill_instances

    @property
    def num_decode(self) -> int:
        return self.num_decode_instances

    @property
    def poll_interval_ms(self) -> float:
        """The polling period in ms (the policy's own when `poll_interval_s` is unset)."""
        return 1000.0 * (self.poll_interval_s or get_policy(self.policy).poll_interval_s)

    def engine_overrides(self) -> dict[str, Any]:
        overrides = {"dtype": resolve_dtype(self.dtype), **self.engine}
        if self.model is not None:
            overrides["model"] = self.model
        return overrides


# the old name of ServeClusterConfig (imports in the server, CLI, tests and benches)
ClusterConfig = ServeClusterConfig
