"""Small scenarios and synthetic request streams for simulator tests."""

from __future__ import annotations

import numpy as np
import pytest

from starserve.sim.config import ClusterConfig, PredictorConfig, Scenario, SloConfig
from starserve.workload import WorkloadRequest, poisson_arrivals


def skewed_requests(num: int, rate_per_s: float, seed: int = 0) -> list[WorkloadRequest]:
    """Mostly short outputs with a heavy tail of long ones (a reasoning-like mix)."""
    rng = np.random.default_rng(seed)
    requests = []
    for i in range(num):
        long = rng.random() < 0.15
        output = int(rng.integers(2000, 6000)) if long else int(rng.integers(20, 400))
        requests.append(WorkloadRequest(f"q{i}", 0.0, int(rng.integers(50, 800)), output))
    return poisson_arrivals(requests, rate_per_s, seed)


def small_scenario(capacity_tokens: int = 60_000, decode: int = 4, **cluster: object) -> Scenario:
    return Scenario(
        name="test",
        slos=SloConfig(ttft_ms=2000, tpot_ms=40),
        cluster=ClusterConfig(
            num_prefill_instances=2,
            num_decode_instances=decode,
            kv_capacity_tokens=capacity_tokens,
            **cluster,  # type: ignore[arg-type]
        ),
        predictor=PredictorConfig(kind="relative_noise", relative_noise=0.3),
    )


@pytest.fixture
def make_requests():
    return skewed_requests


@pytest.fixture
def make_scenario():
    return small_scenario
