"""Workloads: request traces, prompt sets, arrival processes and their statistics.

Everything produces `list[WorkloadRequest]` and is deterministic for a given seed.
"""

from starserve.workload.arrivals import (
    ARRIVAL_PROCESSES,
    apply_arrivals,
    gamma_arrivals,
    poisson_arrivals,
    rescale_rate,
    trace_arrivals,
)
from starserve.workload.reasoning import sample_servegen_reasoning, servegen_reasoning_trace
from starserve.workload.registry import WorkloadInfo, list_workloads, load_workload
from starserve.workload.stats import TokenStats, WorkloadStats, describe
from starserve.workload.types import WorkloadRequest

__all__ = [
    "ARRIVAL_PROCESSES",
    "TokenStats",
    "WorkloadInfo",
    "WorkloadRequest",
    "WorkloadStats",
    "apply_arrivals",
    "describe",
    "gamma_arrivals",
    "list_workloads",
    "load_workload",
    "poisson_arrivals",
    "rescale_rate",
    "sample_servegen_reasoning",
    "servegen_reasoning_trace",
    "trace_arrivals",
]
