"""`PolicySpec.reads` is true: a policy that claims to read less than per-request loads picks
the same instance from the aggregates alone (the simulator builds only those for it)."""

from __future__ import annotations

import dataclasses
import random

from starserve.policy import POLICIES, NewRequest
from tests.policy.test_policies import random_snapshot


def test_policies_reading_less_decide_the_same_without_requests() -> None:
    light = [spec for spec in POLICIES.values() if spec.reads != "requests"]
    assert {spec.name for spec in light} >= {"round_robin", "least_current_load"}
    rng = random.Random(7)
    for spec in light:
        full, aggregate = spec.bind(), spec.bind()
        for trial in range(200):
            snapshots = [random_snapshot(rng, i) for i in range(rng.randint(1, 6))]
            if spec.reads == "nothing":
                bare = [dataclasses.replace(s, requests=(), num_free_blocks=0) for s in snapshots]
            else:
                bare = [dataclasses.replace(s, requests=(), incoming=()) for s in snapshots]
            request = NewRequest(f"n{trial}", rng.randint(1, 500), rng.uniform(1, 900))
            assert full.dispatch(snapshots, request) == aggregate.dispatch(bare, request), spec.name
