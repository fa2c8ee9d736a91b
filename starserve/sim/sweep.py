"""Sweeps over (policy, rate, seed): the grid and one point's work, free of Ray.

`starserve.sim.sweep_ray` fans the points out as Ray tasks; everything here runs anywhere.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starserve.errors import StarserveError
from starserve.sim.config import Scenario
from starserve.sim.run import scenario_requests, simulate
from starserve.workload import WorkloadRequest


@dataclass(frozen=True, slots=True)
class SweepPoint:
    policy: str
    rate_per_s: float
    seed: int


def parse_number_list(text: str, flag: str, kind: type = float) -> list[Any]:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise StarserveError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise StarserveError(f"{flag}: give at least one non-negative number")
    return values


def sweep_grid(
    policies: Sequence[str], rates: Sequence[float], seeds: Sequence[int]
) -> list[SweepPoint]:
    return [SweepPoint(p, r, s) for p, r, s in itertools.product(policies, rates, seeds)]


def run_point(
    scenario: Scenario, point: SweepPoint, base: Sequence[WorkloadRequest] | None
) -> dict[str, Any]:
    """Simulate one grid point; a small JSON-able row."""
    seeded = scenario.model_copy(
        update={
            "workload": scenario.workload.model_copy(update={"seed": point.seed}),
            "predictor": scenario.predictor.model_copy(update={"seed": point.seed}),
        }
    )
    requests = scenario_requests(seeded, point.rate_per_s, None, base)
    result = simulate(seeded, point.policy, requests, point.rate_per_s, keep_records=False)
    s = result.summary
    return {
        "policy": point.policy,
        "rate_per_s": point.rate_per_s,
        "seed": point.seed,
        "slo_attainment": s["slo_attainment"],
        "goodput_rps": s["request_goodput"],
        "p99_tpot_ms": s["p99_tpot_ms"],
        "mean_tpot_ms": s["mean_tpot_ms"],
        "p99_ttft_ms": s["p99_ttft_ms"],
        **result.counters,
    }
