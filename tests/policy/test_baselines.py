"""The baselines users run today: Llumnix v1's rescheduler and power-of-two-choices dispatch."""

from __future__ import annotations

import random
from collections import Counter

from starserve.policy import get_policy
from starserve.policy.dispatch import llumnix_v1_least_projected, power_of_two
from starserve.policy.load import kv_cache_usage_ratio_projected, num_queued_requests
from starserve.policy.rebalance import (
    LLUMNIX_V1_DECODE_LOAD_THRESHOLD,
    LLUMNIX_V1_LOAD_BALANCE_THRESHOLD,
    llumnix_v1,
)
from starserve.policy.types import InstanceSnapshot, NewRequest, RequestLoad
from tests.policy.test_policies import random_cluster

BLOCK = 16


def instance(
    instance_id: int, used: int, waiting_blocks: int = 0, contexts: tuple[int, ...] = (100,)
) -> InstanceSnapshot:
    requests = tuple(RequestLoad(f"r{instance_id}-{k}", c, 1) for k, c in enumerate(contexts))
    return InstanceSnapshot(
        instance_id, BLOCK, 100, 100 - used, 1 if waiting_blocks else 0, 0, requests,
        num_waiting_blocks=waiting_blocks,
    )  # fmt: skip


def test_projected_usage_counts_promised_blocks() -> None:
    assert kv_cache_usage_ratio_projected(instance(0, 60)) == 0.6
    assert kv_cache_usage_ratio_projected(instance(0, 60, waiting_blocks=50)) == 1.1


def test_llumnix_v1_dispatch_picks_least_projected_usage() -> None:
    rng = random.Random(7)
    request = NewRequest("n", 100)
    for _ in range(200):
        snapshots = random_cluster(rng)
        chosen, cursor = llumnix_v1_least_projected(snapshots, request, 5)
        loads = {s.instance_id: kv_cache_usage_ratio_projected(s) for s in snapshots}
        assert loads[chosen] == min(loads.values()) and cursor == 5


def test_llumnix_v1_pairs_overloaded_with_least_loaded_moving_shortest() -> None:
    over_a = instance(0, 90, waiting_blocks=30, contexts=(500, 80, 300))  # 1.2
    over_b = instance(1, 95, waiting_blocks=10, contexts=(40, 900))  # 1.05
    calm = instance(2, 20)  # 0.2
    calmer = instance(3, 10)  # 0.1
    busy = instance(4, 90)  # 0.9: neither source (< 1.0) nor pressed
    decisions = llumnix_v1([over_a, over_b, calm, calmer, busy])
    moves = {(d.src_instance_id, d.dst_instance_id, d.request_id) for d in decisions}
    assert moves == {(0, 3, "r0-1"), (1, 2, "r1-0")}


def test_llumnix_v1_thresholds() -> None:
    # nothing at or above the decode-load threshold: no migration however uneven the loads
    assert llumnix_v1([instance(0, 99), instance(1, 0)]) == []
    # a pair closer than the load-balance threshold is dropped
    src = instance(0, 100)  # exactly the threshold: a source
    dst = instance(1, 100 - 1)  # 0.99: a destination, but only 0.01 - eps apart
    assert kv_cache_usage_ratio_projected(src) >= LLUMNIX_V1_DECODE_LOAD_THRESHOLD
    gap = kv_cache_usage_ratio_projected(src) - kv_cache_usage_ratio_projected(dst)
    assert (gap < LLUMNIX_V1_LOAD_BALANCE_THRESHOLD) == (llumnix_v1([src, dst]) == [])
    assert llumnix_v1([src, instance(1, 50)]) != []
    # an instance with a migration in flight takes no part
    migrating = InstanceSnapshot(1, BLOCK, 100, 90, 0, 0, (), is_migrating=True)
    assert llumnix_v1([src, migrating]) == []


def test_llumnix_v1_spec_reschedules_every_500ms() -> None:
    spec = get_policy("llumnix_v1")
    assert spec.rebalance_interval_s == 0.5 and spec.poll_interval_s == 0.05
    assert spec.bind().rebalance_interval_s == 0.5
    assert get_policy("star").rebalance_interval_s is None


def test_power_of_two_draws_two_distinct_and_keeps_the_shorter_queue() -> None:
    queues = [instance(i, 10, contexts=(50,) * n) for i, n in enumerate([3, 1, 4, 1, 5, 9, 2, 6])]
    request = NewRequest("n", 100)
    cursor, picks = 0, Counter()
    for _ in range(4000):
        chosen, next_cursor = power_of_two(queues, request, cursor)
        assert next_cursor != cursor
        cursor = next_cursor
        picks[chosen] += 1
    # the longest queue (9) never wins a draw; the shortest (1, ids 1 and 3) win most
    assert picks[5] == 0
    assert picks[1] + picks[3] > picks[0] + picks[2] + picks[4]
    # choosing 2 of 8: the shortest queue is in a draw with probability 1/4 + 1/4 - 1/28
    assert abs(picks[1] / 4000 - (0.5 - 1 / 28) / 2) < 0.05


def test_power_of_two_is_reproducible_from_the_seed() -> None:
    snapshots = random_cluster(random.Random(9))
    if len(snapshots) < 2:
        snapshots = random_cluster(random.Random(10))
    request = NewRequest("n", 100)

    def run(seed: int) -> list[int]:
        runner = get_policy("power_of_two").bind()
        runner.cursor = seed
        return [runner.dispatch(snapshots, request) for _ in range(50)]

    assert run(1) == run(1)
    assert run(1) != run(2)
    for chosen in run(3):
        pool = {s.instance_id: num_queued_requests(s) for s in snapshots}
        assert chosen in pool
