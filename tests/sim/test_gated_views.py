"""Light views for a pressure-gated policy (STAR) change the simulator's speed, never a result:
the same run with full snapshots in their place gives identical token times and counters."""

from __future__ import annotations

import dataclasses

import pytest

from starserve.policy import get_policy
from starserve.sim.build import build_cluster, make_sampler
from starserve.sim.records import request_records
from starserve.sim.run import counters


@pytest.mark.parametrize("policy", ["star", "oracle"])
def test_light_views_change_no_result(make_scenario, make_requests, policy: str) -> None:
    scenario = make_scenario(16_000, decode=4)
    spec = get_policy(policy)
    shut = {"views": 0, "gate_shut": 0}

    def counting_gate(snapshots):  # how often the gate stays shut (the test must see both)
        shut["views"] += 1
        is_open = get_policy("star").pressure_gate(snapshots)
        shut["gate_shut"] += not is_open
        return is_open

    outcomes = []
    for full_views in (False, True):
        sim = build_cluster(
            scenario.cluster,
            spec,
            make_requests(300, 14.0),
            make_sampler(scenario.predictor),
            seed=3,
        )
        sim.full_views = full_views
        sim.policy = dataclasses.replace(spec, pressure_gate=counting_gate)
        sim.run()
        records = [tuple(r.token_times_s) for r in request_records(sim)]
        outcomes.append((records, counters(sim)))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][1]["migrations"] > 0, "the gate must open and migrations happen"
    assert 0 < shut["gate_shut"] < shut["views"], shut
