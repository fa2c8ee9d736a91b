"""vLLM `bench serve` metrics against a hand-computed example."""

import math

import pytest

from starserve.metrics import RequestRecord, format_summary, meets_slos, slo_attainment, summarize

# Hand-computed (ms): TTFT 100/500/200, E2EL 600/500/600, TPOT 250/—/100,
# ITLs 200,300 | — | 100,100,100,100. One failed request. Duration 2.6 s.
RECORDS = [
    RequestRecord(0.0, (0.1, 0.3, 0.6), num_prompt_tokens=10),
    RequestRecord(1.0, (1.5,), num_prompt_tokens=20),
    RequestRecord(2.0, (2.2, 2.3, 2.4, 2.5, 2.6), num_prompt_tokens=5),
    RequestRecord(0.5, (), num_prompt_tokens=7, success=False),
]


def approx(value: float) -> object:
    return pytest.approx(value, rel=1e-9, abs=1e-9)


def test_counts_and_throughputs() -> None:
    result = summarize(RECORDS)
    assert result["duration"] == approx(2.6)
    assert result["completed"] == 3
    assert result["total_input_tokens"] == 35  # the failed request's prompt is not counted
    assert result["total_output_tokens"] == 9
    assert result["request_throughput"] == approx(3 / 2.6)
    assert result["output_throughput"] == approx(9 / 2.6)
    assert result["total_token_throughput"] == approx(44 / 2.6)
    assert "request_goodput" not in result


def test_ttft_mean_median_std_and_linear_percentiles() -> None:
    result = summarize(RECORDS)
    assert result["mean_ttft_ms"] == approx(800 / 3)
    assert result["median_ttft_ms"] == approx(200)
    assert result["std_ttft_ms"] == approx(
        math.sqrt(((-500 / 3) ** 2 + (700 / 3) ** 2 + (200 / 3) ** 2) / 3)
    )
    # sorted [100, 200, 500]: p90 at index 1.8, p99 at index 1.98 (linear interpolation)
    assert result["p90_ttft_ms"] == approx(440)
    assert result["p99_ttft_ms"] == approx(494)


def test_tpot_excludes_single_token_outputs() -> None:
    result = summarize(RECORDS)
    # only 250 and 100: the 1-token request has no TPOT (including it as 0 would give 116.7)
    assert result["mean_tpot_ms"] == approx(175)
    assert result["median_tpot_ms"] == approx(175)
    assert result["p90_tpot_ms"] == approx(235)
    assert result["p99_tpot_ms"] == approx(248.5)


def test_itl_and_e2el() -> None:
    result = summarize(RECORDS)
    assert result["mean_itl_ms"] == approx(900 / 6)
    assert result["median_itl_ms"] == approx(100)
    assert result["p90_itl_ms"] == approx(250)  # sorted [100]*4 + [200, 300], index 4.5
    assert result["p99_itl_ms"] == approx(295)
    assert result["mean_e2el_ms"] == approx(1700 / 3)
    assert result["median_e2el_ms"] == approx(600)


def test_goodput_counts_requests_meeting_every_slo() -> None:
    # R1 misses tpot (250 > 200), R2 misses ttft (500 > 300), R3 meets both.
    strict = summarize(RECORDS, goodput_slos_ms={"ttft": 300, "tpot": 200})
    assert strict["request_goodput"] == approx(1 / 2.6)
    # SLOs are inclusive (R2's TTFT is exactly 500 ms); the 1-token request counts as TPOT 0 for goodput (as vLLM does)
    loose = summarize(RECORDS, goodput_slos_ms={"ttft": 500, "tpot": 1})
    assert loose["request_goodput"] == approx(1 / 2.6)
    inclusive = summarize(RECORDS, goodput_slos_ms={"ttft": 500, "e2el": 700})
    assert inclusive["request_goodput"] == approx(3 / 2.6)


def test_slo_attainment_counts_failures_as_misses() -> None:
    assert slo_attainment(RECORDS, {"ttft": 500}) == approx(3 / 4)
    assert slo_attainment(RECORDS, {"ttft": 150}) == approx(1 / 4)
    assert not meets_slos(RECORDS[3], {"ttft": 1e9})


def test_empty_metric_reports_zero_and_explicit_duration_is_used() -> None:
    one_token = [RequestRecord(0.0, (0.25,), num_prompt_tokens=3)]
    result = summarize(one_token, duration_s=10.0)
    assert result["mean_tpot_ms"] == 0.0 and result["p99_itl_ms"] == 0.0
    assert result["request_throughput"] == approx(0.1)
    assert result["mean_ttft_ms"] == approx(250)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown SLO"):
        summarize(RECORDS, goodput_slos_ms={"itl": 5})
    with pytest.raises(ValueError, match="non-decreasing"):
        RequestRecord(0.0, (0.2, 0.1), num_prompt_tokens=1)
    with pytest.raises(ValueError, match="at least one output token"):
        RequestRecord(0.0, (), num_prompt_tokens=1)


def test_format_summary_lists_every_field_like_vllm() -> None:
    text = format_summary(summarize(RECORDS, goodput_slos_ms={"ttft": 300}))
    assert "Successful requests:" in text and "Request goodput (req/s):" in text
    assert "P99 TPOT (ms):" in text and "248.50" in text and "Median ITL (ms):" in text


def test_random_records_satisfy_vllm_identities() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    records = []
    for _ in range(200):
        send_s = float(rng.uniform(0, 10))
        gaps_s = rng.exponential(0.05, size=int(rng.integers(1, 30)))
        records.append(RequestRecord(send_s, tuple(send_s + np.cumsum(gaps_s)), 5))
    multi = [r for r in records if r.num_output_tokens > 1]
    assert multi and len(multi) < len(records)  # both kinds present
    for r in multi:  # E2EL = TTFT + (n - 1) * TPOT, and ITLs sum to E2EL - TTFT
        assert r.e2el_s == pytest.approx(r.ttft_s + (r.num_output_tokens - 1) * r.tpot_s)  # type: ignore[operator]
        assert sum(r.itls_s) == pytest.approx(r.e2el_s - r.ttft_s)
    result = summarize(records)
    assert result["mean_tpot_ms"] == pytest.approx(1000 * np.mean([r.tpot_s for r in multi]))
    assert result["total_output_tokens"] == sum(r.num_output_tokens for r in records)
