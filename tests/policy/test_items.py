"""STAR's per-instance item arrays: the memo returns what a fresh build returns, and policies
decide the same with and without it."""

from __future__ import annotations

import dataclasses
import random

import numpy as np

from starserve.policy import NewRequest, get_policy
from starserve.policy.dispatch import DISPATCH_POLICIES
from starserve.policy.items import ItemsCache, cluster_item_arrays
from starserve.policy.load import instance_items
from starserve.policy.rebalance import REBALANCE_POLICIES
from starserve.policy.types import InstanceSnapshot, RequestLoad

BLOCK = 16


def random_requests(rng: random.Random, prefix: str, count: int) -> tuple[RequestLoad, ...]:
    requests = []
    for k in range(count):
        generated = rng.randint(0, 400)
        # ties on purpose: oracle-like whole numbers, zeros, and missing predictions
        predicted = rng.choice([None, 0.0, -3.0, float(rng.randint(0, 30)), rng.uniform(0, 900)])
        requests.append(RequestLoad(f"{prefix}-{k}", rng.randint(1, 600), generated, predicted))
    return tuple(requests)


def random_snapshot(rng: random.Random, instance_id: int) -> InstanceSnapshot:
    requests = random_requests(rng, f"r{instance_id}", rng.randint(0, 10))
    incoming = random_requests(rng, f"i{instance_id}", rng.choice([0, 0, 2]))
    used = sum(-(-r.num_context_tokens // BLOCK) + 1 for r in requests)
    total = used + rng.randint(0, 300)
    return InstanceSnapshot(
        instance_id, BLOCK, total, total - used, len(incoming), 0, requests, incoming=incoming
    )


def evolve(rng: random.Random, snapshots: list[InstanceSnapshot]) -> list[InstanceSnapshot]:
    """The next round: some instances change, the others keep their very tuples (as the
    controller's `dataclasses.replace` and the simulator's dispatch cache keep them)."""
    return [
        random_snapshot(rng, s.instance_id)
        if rng.random() < 0.3
        else dataclasses.replace(s, is_migrating=rng.random() < 0.1)
        for s in snapshots
    ]


def reference_groups(snapshots: list[InstanceSnapshot]) -> list[list[tuple[float, float]]]:
    """Each instance's (context, remaining) items from the scalar code, by remaining."""
    return [sorted(instance_items(s), key=lambda item: item[1]) for s in snapshots]


def test_cached_arrays_equal_fresh_ones_and_the_scalar_items() -> None:
    rng = random.Random(0)
    cache = ItemsCache()
    snapshots = [random_snapshot(rng, i) for i in range(6)]
    checked = 0
    for _ in range(200):
        snapshots = evolve(rng, snapshots)
        cached, fresh = cluster_item_arrays(snapshots, cache), cluster_item_arrays(snapshots)
        assert np.array_equal(cached.sizes, fresh.sizes)
        assert np.array_equal(cached.context, fresh.context)
        assert np.array_equal(cached.remaining, fresh.remaining)
        assert cached.horizon() == fresh.horizon()
        groups = reference_groups(snapshots)
        assert [len(g) for g in groups] == cached.sizes.tolist()
        flat = [item for group in groups for item in group]
        assert flat, "the random cluster has requests"
        # a stable sort by remaining of each instance's requests, as Python's sorted() gives
        assert cached.remaining.tolist() == [m for _, m in flat]
        assert cached.context.tolist() == [c for c, _ in flat]
        total = 0.0
        for group in (instance_items(s) for s in snapshots):
            total += sum(m for _, m in group)
        assert cached.horizon() == max(1.0, total / len(flat))
        checked += 1
    assert checked == 200


def test_with_item_each_places_the_new_item_in_order() -> None:
    rng = random.Random(1)
    for _ in range(200):
        snapshots = [random_snapshot(rng, i) for i in range(5)]
        new_remaining = float(rng.choice([0, 5, 17, rng.randint(0, 900)]))
        grown = cluster_item_arrays(snapshots).with_item_each(123.0, new_remaining)
        assert grown.sizes.tolist() == [len(instance_items(s)) + 1 for s in snapshots]
        start = 0
        for size in grown.sizes.tolist():
            remaining = grown.remaining[start : start + size]
            assert (np.diff(remaining) >= 0).all()
            assert new_remaining in remaining.tolist()
            start += size


def test_star_decides_the_same_with_and_without_the_memo() -> None:
    rng = random.Random(2)
    runners = {name: get_policy(name).bind() for name in ("star", "oracle", "star_current_only")}
    snapshots = [random_snapshot(rng, i) for i in range(8)]
    decided = 0
    for _ in range(300):
        snapshots = evolve(rng, snapshots)
        request = NewRequest("new", rng.randint(1, 800), rng.choice([None, rng.uniform(0, 900)]))
        for runner in runners.values():
            spec = runner.spec
            fresh_dispatch = DISPATCH_POLICIES[spec.dispatch_name](snapshots, request, 0, None)
            assert runner.dispatch(snapshots, request) == fresh_dispatch[0]
            fresh_plan = REBALANCE_POLICIES[spec.rebalance_name](snapshots, None)
            assert runner.plan_migrations(snapshots) == fresh_plan
            decided += len(fresh_plan)
    assert decided > 50, "the rounds must produce migrations to compare"


def test_a_changed_snapshot_is_never_served_from_the_memo() -> None:
    rng = random.Random(3)
    cache = ItemsCache()
    first = [random_snapshot(rng, 0)]
    while not first[0].requests:
        first = [random_snapshot(rng, 0)]
    cluster_item_arrays(first, cache)
    changed = [dataclasses.replace(first[0], requests=first[0].requests[1:])]
    assert cluster_item_arrays(changed, cache).sizes.tolist() == [len(instance_items(changed[0]))]


def test_order_within_groups_is_lexsort() -> None:
    from starserve.policy.vector import order_within_groups

    rng = np.random.default_rng(4)
    for _ in range(300):
        sizes = rng.integers(0, 9, size=rng.integers(1, 7))
        assert len(sizes) > 0
        # few distinct values (ties) and an occasional +inf, as padding must not pass it
        remaining = rng.choice([0.0, 1.0, 2.5, 7.0, np.inf], size=int(sizes.sum()))
        group = np.repeat(np.arange(len(sizes)), sizes)
        want = np.lexsort((remaining, group))
        assert np.array_equal(order_within_groups(remaining, sizes), want)
