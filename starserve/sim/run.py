"""Run one policy on one request stream and summarise it (vLLM's metrics + simulator counters)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starserve.metrics import RequestRecord, slo_attainment, summarize
from starserve.policy import get_policy
from starserve.sim.build import build_cluster, capacity_tokens, make_sampler
from starserve.sim.cluster import ClusterSim, Timeline
from starserve.sim.config import Scenario, WorkloadConfig
from starserve.sim.records import request_records
from starserve.workload import WorkloadRequest, apply_arrivals, load_workload, rescale_rate


@dataclass(slots=True)
class SimResult:
    policy: str
    rate_per_s: float | None
    records: list[RequestRecord]
    summary: dict[str, Any]
    counters: dict[str, int]
    timeline: Timeline
    sim_duration_s: float


def _clip(requests: list[WorkloadRequest], config: WorkloadConfig) -> list[WorkloadRequest]:
    max_in, max_out = config.max_prompt_tokens, config.max_output_tokens
    if max_in is None and max_out is None:
        return requests
    return [
        dataclasses.replace(
            r,
            num_prompt_tokens=min(r.num_prompt_tokens, max_in or r.num_prompt_tokens),
            num_output_tokens=min(r.num_output_tokens, max_out or r.num_output_tokens),
        )
        for r in requests
    ]


def scenario_requests(
    scenario: Scenario,
    rate_per_s: float | None = None,
    num_requests: int | None = None,
    base: Sequence[WorkloadRequest] | None = None,
    rate_scale: float = 1.0,
) -> list[WorkloadRequest]:
    """The scenario's request stream (or `base`, e.g. a user trace) at `rate_per_s`
    (default: the scenario's rate, or a trace's own timestamps, times `rate_scale`)."""
    config = scenario.workload
    if base is not None:
        requests = list(base)
    else:
        count = num_requests or config.num_requests
        requests = load_workload(config.name, num_requests=count, seed=config.seed)
    requests = _clip(requests, config)
    if rate_per_s is None and config.rate_per_s is not None:
        rate_per_s = config.rate_per_s * rate_scale
        rate_scale = 1.0
    timed = apply_arrivals(
        requests, config.arrival, rate_per_s=rate_per_s, cv=config.cv, seed=config.seed
    )
    return timed if rate_scale == 1.0 else rescale_rate(timed, rate_scale)


def counters(sim: ClusterSim) -> dict[str, int]:
    decode = [i.counters for i in sim.decode]
    return {
        "preemptions": sum(c.num_preemptions for c in decode),
        "kv_exhaustion_events": sum(c.num_kv_exhaustion_events for c in decode),
        "recompute_tokens": sum(c.num_recompute_tokens for c in decode),
        "migrations": sim.migrations.num_finished,
        "migrations_started": sim.migrations.num_started,
        "migrations_aborted": sim.migrations.num_aborted,
        "migrations_aborted_by_destination": sim.migrations.num_aborted_by_destination,
        "migration_bytes": sim.migrations.num_bytes,
    }


def simulate(
    scenario: Scenario,
    policy_name: str,
    requests: Sequence[WorkloadRequest],
    rate_per_s: float | None = None,
    keep_records: bool = True,
) -> SimResult:
    """Simulate `requests` under `policy_name` on the scenario's cluster."""
    policy = get_policy(policy_name)
    sim = build_cluster(
        scenario.cluster,
        policy,
        requests,
        make_sampler(scenario.predictor),
        seed=scenario.predictor.seed,
        timeline_interval_s=scenario.timeline_interval_s,
    )
    sim.run()
    records = request_records(sim)
    slos = scenario.slos.as_dict()
    summary = summarize(records, goodput_slos_ms=slos)
    summary["slo_attainment"] = slo_attainment(records, slos)
    return SimResult(
        policy=policy_name,
        rate_per_s=rate_per_s,
        records=records if keep_records else [],
        summary=summary,
        counters=counters(sim),
        timeline=sim.timeline,
        sim_duration_s=sim.now_s,
    )


def kv_capacity_of(scenario: Scenario) -> int:
    return capacity_tokens(scenario.cluster)
