"""A scenario's experiment: every policy at the scenario's rate, plus DistServe's max rate at
>= 90% SLO attainment, gathered into the `results.json` dictionary."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starserve.metrics import RequestRecord, max_rate_at_slo
from starserve.sim.config import Scenario
from starserve.sim.run import SimResult, scenario_requests, simulate
from starserve.workload import WorkloadRequest

Progress = Callable[[str], None]


@dataclass(slots=True)
class RateCurve:
    """Every (rate, attainment, goodput) the max-rate search evaluated."""

    points: list[dict[str, float]] = field(default_factory=list)
    max_rate_per_s: float = 0.0
    bracketed: bool = True


def rate_search(
    scenario: Scenario,
    policy: str,
    base: Sequence[WorkloadRequest] | None,
    progress: Progress | None = None,
) -> RateCurve:
    config = scenario.rate_search
    curve = RateCurve()

    def run_at_rate(rate_per_s: float) -> list[RequestRecord]:
        requests = scenario_requests(scenario, rate_per_s, config.num_requests, base)
        result = simulate(scenario, policy, requests, rate_per_s)
        curve.points.append(
            {
                "rate_per_s": rate_per_s,
                "slo_attainment": result.summary["slo_attainment"],
                "goodput_rps": result.summary["request_goodput"],
                "p99_tpot_ms": result.summary["p99_tpot_ms"],
            }
        )
        if progress is not None:
            progress(f"{policy} @ {rate_per_s:.2f} req/s: {result.summary['slo_attainment']:.3f}")
        return result.records

    search = max_rate_at_slo(
        run_at_rate,
        scenario.slos.as_dict(),
        target=config.target_attainment,
        initial_rate_per_s=config.initial_rate_per_s,
        rel_tol=config.rel_tol,
    )
    curve.max_rate_per_s = search.max_rate_per_s
    curve.bracketed = search.bracketed
    curve.points.sort(key=lambda p: p["rate_per_s"])
    return curve


def policy_entry(result: SimResult, curve: RateCurve | None) -> dict[str, Any]:
    """One policy's block of results.json (the issue's keys first, then everything else)."""
    s = result.summary
    entry: dict[str, Any] = {
        "p99_tpot_ms": s["p99_tpot_ms"],
        "mean_tpot_ms": s["mean_tpot_ms"],
        "p99_ttft_ms": s["p99_ttft_ms"],
        "slo_attainment": s["slo_attainment"],
        "goodput_rps": s["request_goodput"],
        "max_rate_at_90pct_slo": curve.max_rate_per_s if curve is not None else None,
        "preemptions": result.counters["preemptions"],
        "migrations": result.counters["migrations"],
    }
    entry.update({k: v for k, v in result.counters.items() if k not in entry})
    entry["rate_per_s"] = result.rate_per_s
    entry["simulated_s"] = result.sim_duration_s
    entry["summary"] = s
    entry["load_timeline"] = {  # per-instance KV utilisation, sampled every interval_s
        "interval_s": result.timeline.interval_s,
        "times_s": [round(t, 3) for t in result.timeline.times_s],
        "kv_utilization": [[round(u, 4) for u in row] for row in result.timeline.kv_utilization],
    }
    if curve is not None:
        entry["rate_search"] = {"bracketed": curve.bracketed, "points": curve.points}
    return entry


def run_experiment(
    scenario: Scenario,
    policies: Sequence[str],
    base: Sequence[WorkloadRequest] | None = None,
    rate_scale: float = 1.0,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], dict[str, SimResult]]:
    """(results.json dictionary, the main run of each policy for plots)."""
    rate = scenario.workload.rate_per_s
    rate = rate * rate_scale if rate is not None else None
    requests = scenario_requests(scenario, None, None, base, rate_scale)
    results: dict[str, Any] = {"scenario": scenario.name, "policies": {}}
    runs = {}
    for policy in policies:
        run = simulate(scenario, policy, requests, rate)
        if progress is not None:
            progress(f"{policy}: main run done ({run.summary['slo_attainment']:.3f} attainment)")
        curve = (
            rate_search(scenario, policy, base, progress) if scenario.rate_search.enabled else None
        )
        results["policies"][policy] = policy_entry(run, curve)
        runs[policy] = run
    results["slos_ms"] = scenario.slos.as_dict()
    results["num_requests"] = len(requests)
    return results, runs
