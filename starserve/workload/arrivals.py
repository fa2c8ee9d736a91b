"""Arrival processes: they assign `arrival_time_s` to a request stream, keeping its order.

All are pure functions of their inputs: randomness comes only from the `seed` (or a passed
`numpy.random.Generator`), so the same call gives the same times. As in vLLM's `bench serve`,
the first request arrives at 0 s and each later one after an independent inter-arrival gap;
a rate of `math.inf` sends every request at 0 s.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from starserve.errors import StarserveError
from starserve.workload.types import WorkloadRequest

SeedLike = int | np.random.Generator


def as_generator(seed: SeedLike) -> np.random.Generator:
    """A numpy Generator from an int seed (or the Generator itself)."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def with_arrival_times(
    requests: Sequence[WorkloadRequest], arrival_times_s: Sequence[float] | np.ndarray
) -> list[WorkloadRequest]:
    """Copies of `requests` with the given arrival times (one per request)."""
    if len(arrival_times_s) != len(requests):
        raise ValueError("one arrival time per request")
    return [
        dataclasses.replace(request, arrival_time_s=float(time_s))
        for request, time_s in zip(requests, arrival_times_s, strict=True)
    ]


def _check_rate(rate_per_s: float) -> None:
    if not rate_per_s > 0:
        raise StarserveError(f"request rate must be > 0 req/s, got {rate_per_s}")


def _times_from_gaps(gaps_s: np.ndarray) -> np.ndarray:
    times_s = np.cumsum(gaps_s)
    return np.concatenate(([0.0], times_s[:-1])) if len(gaps_s) else times_s


def gamma_arrivals(
    requests: Sequence[WorkloadRequest], rate_per_s: float, cv: float, seed: SeedLike
) -> list[WorkloadRequest]:
    """Gamma renewal arrivals with mean rate `rate_per_s` and inter-arrival CV `cv`.

    Shape = 1/cv² (vLLM's `--burstiness`), scale = 1/(rate·shape); cv = 1 is Poisson,
    cv > 1 burstier, cv < 1 smoother.
    """
    _check_rate(rate_per_s)
    if not cv > 0:
        raise StarserveError(f"coefficient of variation must be > 0, got {cv}")
    if math.isinf(rate_per_s):
        return with_arrival_times(requests, np.zeros(len(requests)))
    shape = 1.0 / (cv * cv)
    scale_s = 1.0 / (rate_per_s * shape)
    gaps_s = as_generator(seed).gamma(shape, scale_s, size=len(requests))
    return with_arrival_times(requests, _times_from_gaps(gaps_s))


def poisson_arrivals(
    requests: Sequence[WorkloadRequest], rate_per_s: float, seed: SeedLike
) -> list[WorkloadRequest]:
    """Poisson arrivals (exponential gaps) at `rate_per_s`."""
    return gamma_arrivals(requests, rate_per_s, 1.0, seed)


def rescale_rate(requests: Sequence[WorkloadRequest], factor: float) -> list[WorkloadRequest]:
    """Multiply the request rate by `factor`: every arrival time is divided by it.

    factor 2 compresses the trace into half the time (twice the rate); the order and the
    relative burstiness (CV) are unchanged.
    """
    if not (factor > 0 and math.isfinite(factor)):
        raise StarserveError(f"rate scale factor must be a finite number > 0, got {factor}")
    return [dataclasses.replace(r, arrival_time_s=r.arrival_time_s / factor) for r in requests]


def has_timestamps(requests: Sequence[WorkloadRequest]) -> bool:
    """Whether the stream carries real arrival times (not every request at the same instant)."""
    return len({r.arrival_time_s for r in requests}) > 1


def trace_arrivals(requests: Sequence[WorkloadRequest]) -> list[WorkloadRequest]:
    """The trace's own timestamps, shifted so the first request arrives at 0 s, sorted by time."""
    if len(requests) > 1 and not has_timestamps(requests):
        raise StarserveError(
            "this workload has no timestamps; choose an arrival process (poisson or gamma) and a rate"
        )
    start_s = min((r.arrival_time_s for r in requests), default=0.0)
    shifted = [dataclasses.replace(r, arrival_time_s=r.arrival_time_s - start_s) for r in requests]
    return sorted(shifted, key=lambda r: r.arrival_time_s)


ArrivalFn = Callable[[Sequence[WorkloadRequest], float, float, SeedLike], list[WorkloadRequest]]

# name -> f(requests, rate_per_s, cv, seed); `trace` ignores rate/cv (rescale separately).
ARRIVAL_PROCESSES: dict[str, ArrivalFn] = {
    "poisson": lambda requests, rate, cv, seed: poisson_arrivals(requests, rate, seed),
    "gamma": gamma_arrivals,
    "trace": lambda requests, rate, cv, seed: trace_arrivals(requests),
}


def apply_arrivals(
    requests: Sequence[WorkloadRequest],
    process: str,
    *,
    rate_per_s: float | None = None,
    cv: float = 1.0,
    seed: SeedLike = 0,
) -> list[WorkloadRequest]:
    """Apply the named arrival process (`poisson`, `gamma` or `trace`).

    For `trace`, a given `rate_per_s` rescales the trace so its mean rate equals it.
    """
    if process not in ARRIVAL_PROCESSES:
        known = ", ".join(ARRIVAL_PROCESSES)
        raise StarserveError(f"unknown arrival process {process!r} (known: {known})")
    if process == "trace":
        timed = trace_arrivals(requests)
        if rate_per_s is None or len(timed) < 2:
            return timed
        _check_rate(rate_per_s)
        own_rate_per_s = len(timed) / timed[-1].arrival_time_s
        return rescale_rate(timed, rate_per_s / own_rate_per_s)
    if rate_per_s is None:
        raise StarserveError(f"arrival process {process!r} needs a request rate")
    return ARRIVAL_PROCESSES[process](requests, rate_per_s, cv, seed)
