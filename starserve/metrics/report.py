"""Human-readable rendering of the `summarize` dict, laid out like vLLM's result block."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starserve.metrics.summary import METRIC_NAMES

_HEADLINES = (
    ("completed", "Successful requests", "{:d}"),
    ("duration", "Benchmark duration (s)", "{:.2f}"),
    ("total_input_tokens", "Total input tokens", "{:d}"),
    ("total_output_tokens", "Total generated tokens", "{:d}"),
    ("request_throughput", "Request throughput (req/s)", "{:.2f}"),
    ("request_goodput", "Request goodput (req/s)", "{:.2f}"),
    ("output_throughput", "Output token throughput (tok/s)", "{:.2f}"),
    ("total_token_throughput", "Total token throughput (tok/s)", "{:.2f}"),
)
_TITLES = {
    "ttft": "Time to First Token",
    "tpot": "Time per Output Token (excl. 1st token)",
    "itl": "Inter-token Latency",
    "e2el": "End-to-end Latency",
}


def format_summary(result: Mapping[str, Any], title: str = "Serving Benchmark Result") -> str:
    """Plain-text block with every field present in `result` (ms for latencies)."""
    lines = [f"{' ' + title + ' ':=^50}"]
    for key, label, fmt in _HEADLINES:
        if key in result:
            lines.append(f"{label + ':':<40}{fmt.format(result[key]):<10}")
    for metric in METRIC_NAMES:
        keys = [k for k in result if k.endswith(f"_{metric}_ms")]
        if not keys:
            continue
        lines.append(f"{_TITLES[metric]:-^50}")
        for key in keys:
            stat = key.split("_", 1)[0]
            label = (
                f"{stat.capitalize() if stat[0] != 'p' else stat.upper()} {metric.upper()} (ms):"
            )
            lines.append(f"{label:<40}{result[key]:<10.2f}")
    lines.append("=" * 50)
    return "\n".join(lines)
