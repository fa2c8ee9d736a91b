"""Serving metrics with vLLM `bench serve` definitions, SLO attainment and max rate at SLO."""

from starserve.metrics.records import RequestRecord
from starserve.metrics.report import format_summary
from starserve.metrics.slo import MaxRateSearch, max_rate_at_slo, slo_attainment
from starserve.metrics.summary import benchmark_duration_s, meets_slos, summarize

__all__ = [
    "MaxRateSearch",
    "RequestRecord",
    "format_summary",
    "benchmark_duration_s",
    "max_rate_at_slo",
    "meets_slos",
    "slo_attainment",
    "summarize",
]
