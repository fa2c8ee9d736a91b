"""Assemble a `ClusterSim` from a scenario's cluster settings, a policy and a request stream."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from starserve.errors import StarserveError
from starserve.mechanism.placement import PrefillPlacer
from starserve.paths import ASSETS_DIR
from starserve.policy import PolicySpec
from starserve.sim.cluster import ClusterSim, Timeline
from starserve.sim.config import ClusterConfig, PredictorConfig
from starserve.sim.decode import DecodeInstance
from starserve.sim.hardware import GPUS, MODELS, kv_capacity_tokens
from starserve.sim.latency import LatencyModel, ProfiledLatencyModel
from starserve.sim.measured import measured_latency_model
from starserve.sim.migration import MigrationLink
from starserve.sim.predictor import (
    LogRatioSampler,
    OracleSampler,
    RelativeNoiseSampler,
    load_error_profile,
)
from starserve.sim.prefill import PrefillInstance
from starserve.sim.request import SimRequest
from starserve.sim.snapshots import SimPredictor
from starserve.workload import WorkloadRequest

DEFAULT_ERROR_PROFILE = ASSETS_DIR / "predictor" / "error_profile.json"


@functools.lru_cache(maxsize=8)
def latency_model(model: str, gpu: str, tensor_parallel: int) -> ProfiledLatencyModel:
    return ProfiledLatencyModel.build(model, gpu, tensor_parallel)


def cluster_latency_model(cluster: ClusterConfig) -> LatencyModel:
    """The measured profile's model when the scenario names one, else the GPU model."""
    if cluster.profile is not None:
        return measured_latency_model(cluster.profile)
    return latency_model(cluster.model, cluster.gpu, cluster.tensor_parallel)


def capacity_tokens(cluster: ClusterConfig) -> int:
    if cluster.kv_capacity_tokens is not None:
        return cluster.kv_capacity_tokens
    if cluster.profile is not None:
        return measured_latency_model(cluster.profile).profile.int_meta("kv_capacity_tokens")
    return kv_capacity_tokens(
        MODELS[cluster.model],
        GPUS[cluster.gpu],
        cluster.tensor_parallel,
        cluster.gpu_memory_utilization,
    )


def make_sampler(config: PredictorConfig) -> LogRatioSampler:
    if config.kind == "relative_noise":
        return (
            RelativeNoiseSampler(config.relative_noise)
            if config.relative_noise
            else OracleSampler()
        )
    path = config.error_profile or DEFAULT_ERROR_PROFILE
    return load_error_profile(path)


def to_sim_requests(
    requests: Sequence[WorkloadRequest], max_context_tokens: int
) -> list[SimRequest]:
    """Simulator requests; unknown output lengths and requests no instance can hold are errors."""
    sim_requests = []
    for r in requests:
        if r.num_output_tokens < 1 or r.num_prompt_tokens < 1:
            raise StarserveError(
                f"request {r.request_id}: the simulator needs known prompt and output lengths (>= 1)"
            )
        if r.num_prompt_tokens + r.num_output_tokens > max_context_tokens:
            raise StarserveError(
                f"request {r.request_id} needs {r.num_prompt_tokens + r.num_output_tokens} KV tokens "
                f"but a decode instance holds {max_context_tokens}; clip with "
                "workload.max_prompt_tokens / max_output_tokens"
            )
        sim_requests.append(
            SimRequest(r.request_id, r.arrival_time_s, r.num_prompt_tokens, r.num_output_tokens)
        )
    return sim_requests


def build_cluster(
    cluster: ClusterConfig,
    policy: PolicySpec,
    requests: Sequence[WorkloadRequest],
    sampler: LogRatioSampler,
    seed: int = 0,
    timeline_interval_s: float = 1.0,
    latency: LatencyModel | None = None,
) -> ClusterSim:
    lm = latency or cluster_latency_model(cluster)
    num_blocks = capacity_tokens(cluster) // cluster.block_size
    watermark = int(cluster.watermark_fraction * num_blocks)
    # the largest context a lone sequence may reach: all blocks but the watermark and its own
    # partial block
    max_context = (num_blocks - watermark - 2) * cluster.block_size
    decode = [
        DecodeInstance(i, lm, num_blocks, cluster.block_size, cluster.max_num_seqs, watermark)
        for i in range(cluster.num_decode_instances)
    ]
    prefill = [
        PrefillInstance(i, lm, cluster.prefill_token_budget)
        for i in range(cluster.num_prefill_instances)
    ]
    kv_bytes = lm.kv_bytes_per_token
    link = MigrationLink(
        bandwidth_bytes_per_s=cluster.migration_bandwidth_gb_per_s * 1e9,
        overhead_s=cluster.migration_overhead_ms / 1000.0,
        kv_bytes_per_token=kv_bytes,
        config=cluster.migration_config(),
    )
    transfer_bw = cluster.kv_transfer_bandwidth_gb_per_s * 1e9
    transfer_overhead_s = cluster.kv_transfer_overhead_ms / 1000.0

    def transfer_s(num_tokens: int) -> float:
        return transfer_overhead_s + num_tokens * kv_bytes / transfer_bw

    predictor = SimPredictor(policy.predictor, sampler, np.random.default_rng(seed))
    return ClusterSim(
        policy=policy,
        prefill=prefill,
        decode=decode,
        predictor=predictor,
        link=link,
        transfer_s=transfer_s,
        poll_interval_s=cluster.poll_interval_s or policy.poll_interval_s,
        timeline=Timeline(timeline_interval_s),
        requests=to_sim_requests(requests, max_context),
        placer=PrefillPlacer.named(cluster.prefill_placement),
    )
