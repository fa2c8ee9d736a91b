"""SLO attainment and the DistServe-style search for the highest rate that meets the SLOs.

DistServe reports "the maximum request rate at which at least 90% of requests meet the SLOs".
`max_rate_at_slo` finds it with any rate -> per-request records function (a simulator run or a
real benchmark): it brackets the answer by doubling or halving a starting rate, then bisects.
It assumes attainment does not increase with rate (monotone); where a noisy measurement breaks
that, the answer is one rate where the target was met with a neighbouring rate where it was
not, within the tolerance, not necessarily the highest such rate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from starserve.metrics.records import RequestRecord
from starserve.metrics.summary import meets_slos


def slo_attainment(records: Sequence[RequestRecord], slos_ms: Mapping[str, float]) -> float:
    """Fraction of all requests (failed ones count as misses) meeting every SLO, in [0, 1]."""
    if not records:
        raise ValueError("SLO attainment of an empty set of requests is undefined")
    return sum(meets_slos(r, slos_ms) for r in records) / len(records)


@dataclass(frozen=True, slots=True)
class MaxRateSearch:
    """The answer and every (rate req/s, attainment) the search evaluated, in order."""

    max_rate_per_s: float
    evaluations: tuple[tuple[float, float], ...]
    # False when the target was still met at max_rate_per_s (the answer is a lower bound).
    bracketed: bool


def max_rate_at_slo(
    latencies_at_rate: Callable[[float], Sequence[RequestRecord]],
    slo: Mapping[str, float],
    target: float = 0.9,
    *,
    initial_rate_per_s: float = 1.0,
    min_rate_per_s: float = 1e-3,
    max_rate_per_s: float = 1e4,
    rel_tol: float = 0.01,
    on_evaluation: Callable[[float, float], None] | None = None,
) -> MaxRateSearch:
    """Highest rate (req/s) at which `slo_attainment >= target`, to relative tolerance `rel_tol`.

    `slo` uses vLLM's goodput keys in ms (`ttft`, `tpot`, `e2el`). Returns 0 if even
    `min_rate_per_s` misses the target, and `max_rate_per_s` (with `bracketed=False`) if even
    that rate meets it. `on_evaluation(rate, attainment)` is called after each evaluation
    (for progress reporting: each one may be a whole simulation or benchmark run).
    """
    if not (0 < target <= 1 and 0 < min_rate_per_s <= initial_rate_per_s <= max_rate_per_s):
        raise ValueError("need 0 < target <= 1 and min_rate <= initial_rate <= max_rate, all > 0")
    evaluations: list[tuple[float, float]] = []

    def meets(rate_per_s: float) -> bool:
        attainment = slo_attainment(latencies_at_rate(rate_per_s), slo)
        evaluations.append((rate_per_s, attainment))
        if on_evaluation is not None:
            on_evaluation(rate_per_s, attainment)
        return attainment >= target

    def result(rate_per_s: float, bracketed: bool = True) -> MaxRateSearch:
        return MaxRateSearch(rate_per_s, tuple(evaluations), bracketed)

    good, bad = _bracket(meets, initial_rate_per_s, min_rate_per_s, max_rate_per_s)
    if good is None:
        return result(0.0)
    if bad is None:
        return result(good, bracketed=False)
    while bad - good > rel_tol * bad:
        middle = 0.5 * (good + bad)
        if meets(middle):
            good = middle
        else:
            bad = middle
    return result(good)


def _bracket(
    meets: Callable[[float], bool], rate: float, min_rate: float, max_rate: float
) -> tuple[float | None, float | None]:
    """(a rate that meets, a higher one that misses); None where the limit was reached."""
    if meets(rate):
        while rate < max_rate:
            higher = min(2.0 * rate, max_rate)
            if not meets(higher):
                return rate, higher
            rate = higher
        return rate, None
    while rate > min_rate:
        lower = max(0.5 * rate, min_rate)
        if meets(lower):
            return lower, rate
        rate = lower
    return None, rate
