"""The one cluster settings concept: what the simulated and the live cluster share.

`starserve.sim.config.SimClusterConfig` adds the simulated hardware (GPU, model shape, links);
`starserve.cluster.config.ServeClusterConfig` adds what a live cluster runs (model file,
dtype, Ray resources). The fields below exist once, under one name, in both.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from starserve.config import Settings
from starserve.mechanism.migration import MigrationConfig
from starserve.mechanism.placement import DEFAULT_PREFILL_PLACEMENT, PREFILL_PLACEMENTS

# older keys still accepted in YAML, CLI mappings and constructors: old -> (new, scale)
LEGACY_KEYS: dict[str, tuple[str, float]] = {
    "num_prefill": ("num_prefill_instances", 1.0),
    "num_decode": ("num_decode_instances", 1.0),
    "poll_interval_ms": ("poll_interval_s", 0.001),
    "migration_last_stage_blocks": ("migration_final_stage_max_blocks", 1.0),
}


class ClusterConfig(Settings):
    """Instances, prefill placement, polling and migration staging of a PD cluster."""

    num_prefill_instances: int = Field(default=1, ge=1, description="prefill instances")
    num_decode_instances: int = Field(default=2, ge=1, le=4096, description="decode instances")
    prefill_placement: str = Field(
        default=DEFAULT_PREFILL_PLACEMENT,
        description=f"prefill placement ({', '.join(PREFILL_PLACEMENTS)})",
    )
    poll_interval_s: float | None = Field(
        default=None, gt=0, description="snapshot polling period (default: the policy's, 50 ms)"
    )
    migration_max_stages: int = Field(
        default=3, ge=1, description="migration stages, the final paused one included (Llumnix: 3)"
    )
    migration_final_stage_max_blocks: int = Field(
        default=16,
        ge=0,
        description="Llumnix: go to the final (pausing) stage once a copy stage carried <= this",
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not any(key in data for key in LEGACY_KEYS):
            return data
        data = dict(data)
        for old, (new, scale) in LEGACY_KEYS.items():
            if old in data:
                if new in data:
                    raise ValueError(f"give {new} or its old name {old}, not both")
                value = data.pop(old)
                data[new] = value * scale if scale != 1.0 and value is not None else value
        return data

    @field_validator("prefill_placement")
    @classmethod
    def _known_placement(cls, name: str) -> str:
        if name not in PREFILL_PLACEMENTS:
            raise ValueError(f"unknown placement {name!r}; known: {', '.join(PREFILL_PLACEMENTS)}")
        return name

    def migration_config(self) -> MigrationConfig:
        return MigrationConfig(
            max_stages=self.migration_max_stages,
            final_stage_max_blocks=self.migration_final_stage_max_blocks,
        )
