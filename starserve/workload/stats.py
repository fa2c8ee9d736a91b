"""Summary statistics of a request stream (what `starserve workload describe` prints)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from starserve.workload.types import WorkloadRequest


@dataclass(frozen=True, slots=True)
class TokenStats:
    """Mean, percentiles (numpy's default linear interpolation) and max of a token count."""

    mean: float
    p50: float
    p90: float
    p99: float
    max: int

    @staticmethod
    def of(values: np.ndarray) -> TokenStats:
        if len(values) == 0:
            return TokenStats(0.0, 0.0, 0.0, 0.0, 0)
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return TokenStats(
            float(values.mean()), float(p50), float(p90), float(p99), int(values.max())
        )


@dataclass(frozen=True, slots=True)
class WorkloadStats:
    """count, time span (last − first arrival), mean rate = count ÷ span (None if span is 0)."""

    count: int
    time_span_s: float
    mean_rate_per_s: float | None
    input_tokens: TokenStats
    output_tokens: TokenStats


def describe(requests: Sequence[WorkloadRequest]) -> WorkloadStats:
    """Statistics of `requests`: count, time span, mean arrival rate, input/output lengths."""
    arrivals_s = np.array([r.arrival_time_s for r in requests], dtype=np.float64)
    span_s = float(arrivals_s.max() - arrivals_s.min()) if len(arrivals_s) else 0.0
    return WorkloadStats(
        count=len(requests),
        time_span_s=span_s,
        mean_rate_per_s=len(requests) / span_s if span_s > 0 else None,
        input_tokens=TokenStats.of(
            np.array([r.num_prompt_tokens for r in requests], dtype=np.int64)
        ),
        output_tokens=TokenStats.of(
            np.array([r.num_output_tokens for r in requests], dtype=np.int64)
        ),
    )
