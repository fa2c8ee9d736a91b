"""The `vllm bench serve` result dictionary, computed from per-request records.

Field names and definitions follow vLLM's `calculate_metrics` exactly: latency metrics cover
successful requests only; TPOT only requests with more than one output token; an empty metric
list reports 0 (vLLM's `np.mean(x or 0)`); std is numpy's population std; percentiles are numpy's
default (linear interpolation). Goodput counts successful requests meeting every given SLO
(`ttft`, `tpot`, `e2el`, in ms, inclusive `<=`), where a request with one output token has TPOT
0 for this purpose, as in vLLM; it is divided by the benchmark duration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from starserve.metrics.records import RequestRecord

PERCENTILES = (90.0, 99.0)
METRIC_NAMES = ("ttft", "tpot", "itl", "e2el")
SLO_KEYS = ("ttft", "tpot", "e2el")


def percentile_key(metric: str, percentile: float) -> str:
    """vLLM's key, e.g. `p99_ttft_ms` (`p99.9_ttft_ms` for non-integer percentiles)."""
    label = str(int(percentile)) if int(percentile) == percentile else str(percentile)
    return f"p{label}_{metric}_ms"


def _latency_fields(
    metric: str, values_s: Sequence[float], percentiles: Sequence[float]
) -> dict[str, float]:
    data = np.asarray(values_s if values_s else [0.0], dtype=np.float64) * 1000.0
    fields = {
        f"mean_{metric}_ms": float(np.mean(data)),
        f"median_{metric}_ms": float(np.median(data)),
        f"std_{metric}_ms": float(np.std(data)),
    }
    for p in percentiles:
        fields[percentile_key(metric, p)] = float(np.percentile(data, p))
    return fields


def _check_slos(slos_ms: Mapping[str, float]) -> None:
    unknown = set(slos_ms) - set(SLO_KEYS)
    if unknown:
        raise ValueError(f"unknown SLO key(s) {sorted(unknown)}; vLLM's are {list(SLO_KEYS)}")


def meets_slos(record: RequestRecord, slos_ms: Mapping[str, float]) -> bool:
    """Whether a successful request meets every given SLO (ms, inclusive), as vLLM judges it."""
    _check_slos(slos_ms)
    if not record.success:
        return False
    observed_s = {
        "ttft": record.ttft_s,
        "tpot": record.tpot_s if record.tpot_s is not None else 0.0,
        "e2el": record.e2el_s,
    }
    return all(slo / 1000.0 >= observed_s[key] for key, slo in slos_ms.items())


def benchmark_duration_s(records: Sequence[RequestRecord]) -> float:
    """Last token time − first send time over all records (vLLM times the whole run)."""
    if not records:
        return 0.0
    return max(r.end_time_s for r in records) - min(r.send_time_s for r in records)


def summarize(
    records: Sequence[RequestRecord],
    *,
    duration_s: float | None = None,
    goodput_slos_ms: Mapping[str, float] | None = None,
    percentiles: Sequence[float] = PERCENTILES,
) -> dict[str, Any]:
    """vLLM's result dict (`completed`, `request_throughput`, `mean_ttft_ms`, ...).

    `duration_s` defaults to `benchmark_duration_s(records)`; pass the client's own wall
    time when it has one. `request_goodput` is present only when `goodput_slos_ms` is given.
    """
    duration_s = benchmark_duration_s(records) if duration_s is None else duration_s
    if not duration_s > 0:
        raise ValueError(f"benchmark duration must be > 0 s, got {duration_s}")
    ok = [r for r in records if r.success]
    total_input = sum(r.num_prompt_tokens for r in ok)
    total_output = sum(r.num_output_tokens for r in ok)
    result: dict[str, Any] = {
        "duration": duration_s,
        "completed": len(ok),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(ok) / duration_s,
        "output_throughput": total_output / duration_s,
        "total_token_throughput": (total_input + total_output) / duration_s,
    }
    if goodput_slos_ms is not None:
        good = sum(meets_slos(r, goodput_slos_ms) for r in ok)
        result["request_goodput"] = good / duration_s
    per_metric: dict[str, list[float]] = {
        "ttft": [r.ttft_s for r in ok],
        "tpot": [t for r in ok if (t := r.tpot_s) is not None],
        "itl": [gap for r in ok for gap in r.itls_s],
        "e2el": [r.e2el_s for r in ok],
    }
    for metric in METRIC_NAMES:
        result.update(_latency_fields(metric, per_metric[metric], percentiles))
    return result
