"""Scenario configuration: one YAML file = one `Scenario` (validation only, no I/O here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from starserve.config import Settings
from starserve.mechanism.config import ClusterConfig as SharedClusterConfig
from starserve.sim.hardware import GPUS, MODELS


class SimClusterConfig(SharedClusterConfig):
    """Hardware and engine settings of the simulated PD cluster (the shared cluster fields
    come from `starserve.mechanism.config.ClusterConfig`)."""

    model: str = Field(
        default="llama3-8b", description="model shape (starserve.sim.hardware.MODELS)"
    )
    gpu: str = Field(default="h100", description="GPU kind (starserve.sim.hardware.GPUS)")
    tensor_parallel: int = Field(default=1, ge=1, le=8, description="GPUs per instance")
    num_prefill_instances: int = Field(default=2, ge=1, description="prefill instances")
    num_decode_instances: int = Field(default=4, ge=1, le=4096, description="decode instances")
    block_size: int = Field(default=16, ge=1, description="tokens per KV block (vLLM default 16)")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1, description="vLLM default 0.9")
    kv_capacity_tokens: int | None = Field(
        default=None,
        ge=1,
        description="override the KV capacity derived from memory (tests, studies)",
    )
    max_num_seqs: int = Field(default=256, ge=1, description="decode batch cap (vLLM default 256)")
    prefill_token_budget: int = Field(
        default=8192, ge=16, description="tokens per prefill iteration"
    )
    watermark_fraction: float = Field(
        default=0.01, ge=0, lt=1, description="vLLM's admission watermark"
    )
    kv_transfer_bandwidth_gb_per_s: float = Field(
        default=50.0, gt=0, description="P->D KV link (GB/s; 400 Gb/s InfiniBand = 50 GB/s)"
    )
    kv_transfer_overhead_ms: float = Field(
        default=1.0, ge=0, description="fixed cost per P->D transfer"
    )
    migration_bandwidth_gb_per_s: float = Field(default=50.0, gt=0, description="D->D link (GB/s)")
    migration_overhead_ms: float = Field(default=5.0, ge=0, description="fixed cost per migration")
    profile: str | None = Field(
        default=None,
        description="hardware profile from `starserve profile` (e.g. this CPU): its measured step "
        "times replace the model/gpu latency model, its KV bytes per token and (unless "
        "kv_capacity_tokens is set) its instance's KV capacity are used",
    )

    @model_validator(mode="after")
    def _known_names(self) -> SimClusterConfig:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; known: {', '.join(MODELS)}")
        if self.gpu not in GPUS:
            raise ValueError(f"unknown gpu {self.gpu!r}; known: {', '.join(GPUS)}")
        return self


# the old name of SimClusterConfig (imports in tests and benches); the shared concept is
# starserve.mechanism.config.ClusterConfig, which SimClusterConfig extends
ClusterConfig = SimClusterConfig


class WorkloadConfig(Settings):
    """Where requests come from and how they arrive."""

    name: str = Field(default="servegen_reasoning", description="workload name or CSV/JSONL path")
    num_requests: int | None = Field(default=1000, ge=1)
    arrival: Literal["poisson", "gamma", "trace"] = "poisson"
    rate_per_s: float | None = Field(default=8.0, gt=0, description="mean request rate (req/s)")
    cv: float = Field(default=1.0, gt=0, description="gamma arrivals' coefficient of variation")
    max_prompt_tokens: int | None = Field(default=None, ge=1, description="clip longer prompts")
    max_output_tokens: int | None = Field(default=None, ge=1, description="clip longer outputs")
    seed: int = 0


class PredictorConfig(Settings):
    """How predicted remaining lengths are produced for `model`-kind policies."""

    kind: Literal["error_profile", "relative_noise"] = "relative_noise"
    error_profile: str | None = Field(
        default=None, description="error-profile JSON (default: the shipped predictor profile)"
    )
    relative_noise: float = Field(
        default=0.3, ge=0, description="std of ln(predicted+1 / true+1) for kind relative_noise"
    )
    seed: int = 0


class SloConfig(Settings):
    ttft_ms: float = Field(gt=0)
    tpot_ms: float = Field(gt=0)

    def as_dict(self) -> dict[str, float]:
        return {"ttft": self.ttft_ms, "tpot": self.tpot_ms}


class RateSearchConfig(Settings):
    """Max rate at >= target SLO attainment (DistServe)."""

    enabled: bool = True
    target_attainment: float = Field(default=0.9, gt=0, le=1)
    initial_rate_per_s: float = Field(default=4.0, gt=0)
    rel_tol: float = Field(default=0.05, gt=0, lt=1)
    num_requests: int | None = Field(default=None, ge=1, description="requests per search point")


class Scenario(Settings):
    name: str
    description: str = ""
    cluster: SimClusterConfig = SimClusterConfig()
    workload: WorkloadConfig = WorkloadConfig()
    predictor: PredictorConfig = PredictorConfig()
    slos: SloConfig
    rate_search: RateSearchConfig = RateSearchConfig()
    policies: list[str] = ["round_robin", "least_current_load", "llumnix", "star", "oracle"]
    timeline_interval_s: float = Field(
        default=1.0, gt=0, description="load timeline sampling period"
    )
