"""Settings of a serving cluster (validation only; nothing starts at construction)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from starserve.config import Settings


class ClusterConfig(Settings):
    num_prefill: int = Field(1, ge=1, description="prefill instances (Ray actors)")
    num_decode: int = Field(2, ge=1, description="decode instances (Ray actors)")
    policy: str = Field("star", description="dispatch + rebalancing policy (starserve.policy)")
    model: str | None = Field(None, description="GGUF file or HF folder; None = bundled SmolLM2")
    dtype: Literal["float32", "bfloat16"] = Field(
        "bfloat16", description="weights, activations and KV of every instance"
    )
    predictor: str | None = Field(None, description="predictor folder; None = the shipped one")
    use_predictor: bool = Field(True, description="False: no predictions (current load only)")
    predictor_refresh: bool = Field(
        False, description="refit the predictor online from finished requests (predictor.refresh)"
    )
    poll_interval_ms: float = Field(50.0, gt=0, description="controller polling period")
    num_cpus_per_instance: float = Field(1.0, gt=0, description="Ray CPU share per instance")
    engine: dict[str, Any] = Field(
        default_factory=dict, description="extra EngineConfig fields for every instance"
    )
    migration_max_stages: int = Field(3, ge=1, description="stages including the final one")
    migration_final_stage_max_blocks: int = Field(16, ge=0, description="final-stage size")
    max_concurrent_migrations: int = Field(1, ge=1, description="migrations in flight at once")

    def engine_overrides(self) -> dict[str, Any]:
        overrides = {"dtype": self.dtype, **self.engine}
        if self.model is not None:
            overrides["model"] = self.model
        return overrides
