"""Predicted remaining lengths inside the simulator: oracle, synthetic noise, error profile.

All three work on the log ratio r = ln((predicted + 1) / (true + 1)), the quantity the
predictor's error profile records (format: docs/simulator.md). A request keeps its r while its
decode progress stays in one bucket and draws a new one on entering the next bucket, so
errors are correlated in time as a real predictor's are, and re-predictions improve with
progress exactly as much as the measured profile says.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from starserve.errors import StarserveError

PROFILE_FORMAT = "starserve-predictor-error-profile"


class LogRatioSampler(Protocol):
    def sample(self, progress: float, rng: np.random.Generator) -> float:
        """One r for a request at decode progress `progress` (0..1)."""
        ...

    def bucket(self, progress: float) -> int:
        """Requests keep their r while this stays the same; never decreases as progress
        grows (the simulator relies on it to skip re-checking within a bucket)."""
        ...


@dataclass(frozen=True, slots=True)
class OracleSampler:
    def sample(self, progress: float, rng: np.random.Generator) -> float:
        return 0.0

    def bucket(self, progress: float) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class RelativeNoiseSampler:
    """r ~ Normal(0, sigma), redrawn every 10% of progress: a knob for sensitivity sweeps."""

    sigma: float

    def sample(self, progress: float, rng: np.random.Generator) -> float:
        return float(rng.normal(0.0, self.sigma)) if self.sigma > 0 else 0.0

    def bucket(self, progress: float) -> int:
        return min(9, int(progress * 10))


@dataclass(frozen=True, slots=True)
class ErrorProfileSampler:
    """Draws r from the measured samples of the progress bucket."""

    edges: tuple[float, ...]
    samples: tuple[tuple[float, ...], ...]

    def bucket(self, progress: float) -> int:
        index = bisect.bisect_right(self.edges, progress) - 1
        return min(max(index, 0), len(self.samples) - 1)

    def sample(self, progress: float, rng: np.random.Generator) -> float:
        bucket = self.samples[self.bucket(progress)]
        return bucket[int(rng.integers(len(bucket)))]


def load_error_profile(path: str | Path) -> ErrorProfileSampler:
    """Read and validate an error-profile JSON; problems are one-line `StarserveError`s."""
    path = Path(path)
    if not path.is_file():
        raise StarserveError(f"{path}: no such error-profile file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise StarserveError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
        raise StarserveError(f"{path}: format must be {PROFILE_FORMAT!r}")
    edges = data.get("progress_bucket_edges")
    samples = data.get("log_ratio_samples")
    if not isinstance(edges, list) or not isinstance(samples, list) or len(edges) < 2:
        raise StarserveError(f"{path}: needs progress_bucket_edges and log_ratio_samples")
    if len(samples) != len(edges) - 1:
        raise StarserveError(f"{path}: {len(edges) - 1} buckets but {len(samples)} sample lists")
    if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise StarserveError(f"{path}: progress_bucket_edges must increase")
    for i, bucket in enumerate(samples):
        if not bucket or not all(isinstance(v, int | float) and math.isfinite(v) for v in bucket):
            raise StarserveError(f"{path}: bucket {i} must be a non-empty list of finite numbers")
    return ErrorProfileSampler(
        tuple(float(e) for e in edges), tuple(tuple(float(v) for v in b) for b in samples)
    )


def predicted_from_log_ratio(true_remaining: float, log_ratio: float) -> float:
    """predicted = (true + 1) * exp(r) - 1, floored at 0."""
    return max(0.0, (true_remaining + 1.0) * math.exp(log_ratio) - 1.0)
