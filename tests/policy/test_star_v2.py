"""STAR v2: pressure gate, P90 relief, and migration cost against benefit."""

from __future__ import annotations

import dataclasses
import random

from starserve.policy import get_policy
from starserve.policy.dispatch import least_current_load
from starserve.policy.items import cluster_item_arrays
from starserve.policy.load import (
    PRESSURE_UTILIZATION,
    StarWeighting,
    cluster_loads,
    star_context,
    under_pressure,
)
from starserve.policy.types import InstanceSnapshot, NewRequest, RequestLoad
from tests.policy.test_policies import random_cluster

BLOCK = 16


def calm(snapshot: InstanceSnapshot) -> InstanceSnapshot:
    """The same requests on an instance big enough that nothing is short."""
    used = snapshot.num_used_blocks + snapshot.num_waiting_blocks
    total = int(used / (PRESSURE_UTILIZATION / 2)) + 10
    return InstanceSnapshot(
        snapshot.instance_id, BLOCK, total, total - snapshot.num_used_blocks,
        snapshot.num_waiting, 0, snapshot.requests, snapshot.is_migrating,
        snapshot.num_waiting_blocks, snapshot.incoming,
    )  # fmt: skip


def test_without_pressure_star_is_least_current_load_and_never_migrates() -> None:
    rng = random.Random(11)
    star = get_policy("star")
    request = NewRequest("n", 50, 400.0)
    for _ in range(200):
        snapshots = [calm(s) for s in random_cluster(rng)]
        assert not under_pressure(snapshots)
        assert not star.pressure_gate(snapshots)
        runner = star.bind()
        assert runner.dispatch(snapshots, request) == least_current_load(snapshots, request, 0)[0]
        assert runner.plan_migrations(snapshots) == []


def test_pressure_comes_from_usage_or_preemption() -> None:
    empty = InstanceSnapshot(0, BLOCK, 100, 100, 0, 0, ())
    full = InstanceSnapshot(1, BLOCK, 100, 20, 0, 0, (RequestLoad("a", 1200, 5, 10.0),))
    preempting = InstanceSnapshot(2, BLOCK, 100, 90, 1, 1, (), num_waiting_blocks=2)
    assert not under_pressure([empty])
    assert under_pressure([empty, full]) and under_pressure([empty, preempting])


def test_relief_reads_the_upper_quantile() -> None:
    # 4 requests predicted to finish in 30 steps (P90: 50) with 160 tokens of room, i.e.
    # 40 steps of growth: on the point estimate they finish first, on P90 blocks run out
    # within relief's 48-step horizon
    requests = tuple(RequestLoad(f"r{k}", 1600, 10, 30.0) for k in range(4))
    pressed = InstanceSnapshot(0, BLOCK, 414, 10, 0, 0, requests)
    roomy = InstanceSnapshot(1, BLOCK, 2000, 2000, 0, 0, ())
    assert under_pressure([pressed, roomy])
    ahead = get_policy("star_anticipatory").bind().plan_migrations([pressed, roomy])
    assert [(d.src_instance_id, d.dst_instance_id) for d in ahead] == [(0, 1)]
    # STAR itself waits until memory actually runs out (a preempted request waiting)
    assert get_policy("star").bind().plan_migrations([pressed, roomy]) == []
    preempting = dataclasses.replace(pressed, num_waiting=1, num_preempted=1)
    star = get_policy("star").bind().plan_migrations([preempting, roomy])
    assert [(d.src_instance_id, d.dst_instance_id) for d in star] == [(0, 1)]

    snapshots = [pressed, roomy]
    ctx = star_context(snapshots, StarWeighting("dynamic"))
    point = cluster_loads(snapshots, cluster_item_arrays(snapshots), ctx)
    assert point[0][1] == float("inf")  # the point estimate never runs out


def test_a_balance_move_must_buy_more_growth_than_it_copies() -> None:
    # the source's only requests have long contexts and little left: moving one copies more
    # KV than the growth it takes away, so v2 keeps them where they are (v1 moves one)
    heavy = tuple(RequestLoad(f"h{k}", 3000, 10, 200.0) for k in range(3))
    used = -(-3000 // BLOCK) * 3 + 3
    src = InstanceSnapshot(0, BLOCK, int(used / 0.85), int(used / 0.85) - used, 0, 0, heavy)
    dst = InstanceSnapshot(1, BLOCK, int(used / 0.85), int(used / 0.85), 0, 0, ())
    assert under_pressure([src, dst])
    assert get_policy("star_anticipatory").bind().plan_migrations([src, dst]) == []
    assert len(get_policy("star_v1").bind().plan_migrations([src, dst])) == 1
