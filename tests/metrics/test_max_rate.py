"""The max-rate-at-SLO search on a synthetic system whose answer is known."""

import pytest

from starserve.metrics import RequestRecord, max_rate_at_slo
from starserve.metrics.slo import MaxRateSearch


def synthetic(rate_per_s: float) -> list[RequestRecord]:
    """100 requests; request i has TTFT = rate × (i + 1) ms.

    With a 500 ms TTFT SLO, floor(500 / rate) requests meet it, so >= 90% meet it exactly
    when rate <= 500 / 90 = 5.555... req/s.
    """
    return [
        RequestRecord(0.0, (rate_per_s * (i + 1) / 1000.0,), num_prompt_tokens=1)
        for i in range(100)
    ]


TRUE_MAX = 500 / 90


@pytest.mark.parametrize("initial", [0.1, 1.0, 5.0, 400.0])
def test_search_finds_known_answer_from_any_start(initial: float) -> None:
    search = max_rate_at_slo(synthetic, {"ttft": 500}, 0.9, initial_rate_per_s=initial)
    assert isinstance(search, MaxRateSearch) and search.bracketed
    assert TRUE_MAX * (1 - 0.011) <= search.max_rate_per_s <= TRUE_MAX
    met = [rate for rate, attainment in search.evaluations if attainment >= 0.9]
    missed = [rate for rate, attainment in search.evaluations if attainment < 0.9]
    assert met and missed and max(met) == search.max_rate_per_s and min(missed) > TRUE_MAX


def test_target_changes_the_answer() -> None:
    search = max_rate_at_slo(synthetic, {"ttft": 500}, 0.5, rel_tol=1e-4)
    assert search.max_rate_per_s == pytest.approx(10.0, rel=2e-4)  # floor(500/r) >= 50
    assert search.max_rate_per_s <= 10.0


def test_unreachable_and_unbounded_targets() -> None:
    never = max_rate_at_slo(synthetic, {"ttft": 0.001}, 0.9)
    assert never.max_rate_per_s == 0.0
    always = max_rate_at_slo(lambda r: synthetic(1e-9), {"ttft": 500}, 0.9, max_rate_per_s=64)
    assert always.max_rate_per_s == 64 and not always.bracketed


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        max_rate_at_slo(synthetic, {"ttft": 500}, 1.5)


def test_progress_callback_sees_every_evaluation() -> None:
    seen: list[tuple[float, float]] = []
    search = max_rate_at_slo(
        synthetic, {"ttft": 500}, on_evaluation=lambda r, a: seen.append((r, a))
    )
    assert seen and tuple(seen) == search.evaluations
