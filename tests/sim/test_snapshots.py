"""Simulated predictions: skipping the bucket check inside a known bucket changes nothing."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from starserve.sim.build import DEFAULT_ERROR_PROFILE
from starserve.sim.predictor import (
    LogRatioSampler,
    OracleSampler,
    RelativeNoiseSampler,
    load_error_profile,
)
from starserve.sim.request import SimRequest
from starserve.sim.snapshots import SimPredictor

SAMPLERS: list[LogRatioSampler] = [
    OracleSampler(),
    RelativeNoiseSampler(0.5),
    load_error_profile(DEFAULT_ERROR_PROFILE),
]


def reference_remaining(
    sampler: LogRatioSampler, rng: np.random.Generator, request: SimRequest, generated: int
) -> float:
    """The prediction as first written: check the bucket on every observation."""
    progress = generated / max(1, request.num_output_tokens)
    bucket = sampler.bucket(progress)
    if bucket != request.ratio_bucket:
        request.log_ratio = sampler.sample(progress, rng)
        request.ratio_factor = math.exp(request.log_ratio)
        request.ratio_bucket = bucket
    true_remaining = request.num_output_tokens - generated
    return max(0.0, (true_remaining + 1.0) * request.ratio_factor - 1.0)


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: type(s).__name__)
def test_bucket_never_decreases(sampler: LogRatioSampler) -> None:
    buckets = [sampler.bucket(p) for p in np.linspace(0.0, 1.0, 2001)]
    assert buckets and all(a <= b for a, b in zip(buckets, buckets[1:], strict=False))


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: type(s).__name__)
def test_predictions_match_checking_every_observation(sampler: LogRatioSampler) -> None:
    rng = random.Random(0)
    predictor = SimPredictor("model", sampler, np.random.default_rng(7))
    reference_rng = np.random.default_rng(7)
    observed = 0
    for k in range(300):
        num_output = rng.choice([1, 2, 7, rng.randint(1, 5000)])
        fast = SimRequest(f"q{k}", 0.0, 10, num_output)
        slow = SimRequest(f"q{k}", 0.0, 10, num_output)
        generated = 0
        for _ in range(rng.randint(1, 40)):
            # mostly forward, as decoding goes; sometimes back (the check must not assume it)
            step = rng.choice([0, 1, 2, 3, num_output // 7 + 1, -rng.randint(0, 5)])
            generated = min(num_output, max(0, generated + step))
            got = predictor.remaining(fast, generated)
            assert got == reference_remaining(sampler, reference_rng, slow, generated)
            assert fast.log_ratio == slow.log_ratio
            observed += 1
    assert observed > 1000
    assert predictor.rng.random() == reference_rng.random()  # the same draws, in order
