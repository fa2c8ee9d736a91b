"""Arrival processes: rates, CVs, determinism, rescaling."""

import numpy as np
import pytest

from starserve.errors import StarserveError
from starserve.workload import (
    WorkloadRequest,
    apply_arrivals,
    gamma_arrivals,
    poisson_arrivals,
    rescale_rate,
    trace_arrivals,
)


def stream(count: int) -> list[WorkloadRequest]:
    return [WorkloadRequest(f"r{i}", 0.0, 10 + i, 5) for i in range(count)]


def gaps(requests: list[WorkloadRequest]) -> np.ndarray:
    return np.diff([r.arrival_time_s for r in requests])


def test_poisson_rate_cv_and_determinism() -> None:
    timed = poisson_arrivals(stream(20_000), 8.0, seed=3)
    assert timed[0].arrival_time_s == 0.0
    assert [r.request_id for r in timed] == [f"r{i}" for i in range(20_000)]
    g = gaps(timed)
    assert np.all(g >= 0)
    assert 1 / g.mean() == pytest.approx(8.0, rel=0.03)
    assert g.std() / g.mean() == pytest.approx(1.0, rel=0.03)
    assert timed == poisson_arrivals(stream(20_000), 8.0, seed=3)
    assert timed != poisson_arrivals(stream(20_000), 8.0, seed=4)


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_matches_requested_cv(cv: float) -> None:
    g = gaps(gamma_arrivals(stream(40_000), 5.0, cv, seed=1))
    assert 1 / g.mean() == pytest.approx(5.0, rel=0.06)
    assert g.std() / g.mean() == pytest.approx(cv, rel=0.06)


def test_infinite_rate_sends_everything_at_zero() -> None:
    assert {r.arrival_time_s for r in poisson_arrivals(stream(10), float("inf"), 0)} == {0.0}


def test_rescale_compresses_time() -> None:
    timed = poisson_arrivals(stream(100), 2.0, seed=0)
    faster = rescale_rate(timed, 4.0)
    assert [r.arrival_time_s * 4 for r in faster] == pytest.approx(
        [r.arrival_time_s for r in timed]
    )
    with pytest.raises(StarserveError, match="rate scale"):
        rescale_rate(timed, 0.0)


def test_trace_arrivals_shift_and_rate_rescale() -> None:
    raw = [WorkloadRequest(f"r{i}", 10.0 + 2.0 * i, 1, 1) for i in range(5)]
    timed = trace_arrivals(raw)
    assert [r.arrival_time_s for r in timed] == [0.0, 2.0, 4.0, 6.0, 8.0]
    at_rate = apply_arrivals(raw, "trace", rate_per_s=5 / 4)  # own rate is 5 / 8 s
    assert at_rate[-1].arrival_time_s == pytest.approx(4.0)
    with pytest.raises(StarserveError, match="no timestamps"):
        trace_arrivals(stream(3))


def test_unknown_process_and_missing_rate_are_user_errors() -> None:
    with pytest.raises(StarserveError, match="unknown arrival process"):
        apply_arrivals(stream(3), "uniform", rate_per_s=1.0)
    with pytest.raises(StarserveError, match="needs a request rate"):
        apply_arrivals(stream(3), "poisson")
    with pytest.raises(StarserveError, match="> 0"):
        poisson_arrivals(stream(3), -1.0, 0)
