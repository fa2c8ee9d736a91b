"""Rebalance policies: which running requests move between decode instances this round.

Every rebalance function has the signature `(snapshots, cache) -> list[MigrationDecision]`;
pure (`cache`, an `ItemsCache` or None, only saves rebuilding per-instance arrays).
Shared rules: an instance with a migration in flight is neither source nor destination (one
migration per instance at a time), and no instance appears in two decisions of one round.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starserve.policy.items import ItemsCache, cluster_item_arrays
from starserve.policy.load import (
    UPPER_QUANTILE_FACTOR,
    StarContext,
    StarWeighting,
    cluster_loads,
    instance_items,
    kv_cache_usage_ratio_projected,
    llumnix_freeness,
    load_of_items,
    predicted_remaining,
    score_of_items,
    star_context,
    under_pressure,
)
from starserve.policy.types import InstanceSnapshot, MigrationDecision, RequestLoad

RebalanceFn = Callable[[Sequence[InstanceSnapshot], ItemsCache | None], list[MigrationDecision]]

# Llumnix's defaults (llumnix/arg_utils.py): migrate-out threshold -3 on load = -freeness,
# i.e. a source when fewer than 3 free blocks per running request.
LLUMNIX_MIGRATE_OUT_FREENESS = 3.0


def no_migration(
    snapshots: Sequence[InstanceSnapshot], cache: ItemsCache | None = None
) -> list[MigrationDecision]:
    """Never move anything (static PD disaggregation)."""
    return []


def _idle(snapshots: Sequence[InstanceSnapshot]) -> list[InstanceSnapshot]:
    return [s for s in snapshots if not s.is_migrating]


def llumnix_sources(snapshots: Sequence[InstanceSnapshot]) -> list[InstanceSnapshot]:
    """Overloaded instances, most loaded (least free) first; preempted requests count as
    overload whatever the freeness. Only instances with a running request can send one."""
    sources = [
        s
        for s in _idle(snapshots)
        if s.requests
        and (s.num_preempted > 0 or llumnix_freeness(s) < LLUMNIX_MIGRATE_OUT_FREENESS)
    ]
    return sorted(sources, key=lambda s: (-s.num_preempted, llumnix_freeness(s), s.instance_id))


def llumnix_destinations(snapshots: Sequence[InstanceSnapshot]) -> list[InstanceSnapshot]:
    """Underloaded instances, least loaded (most free) first."""
    dests = [
        s
        for s in _idle(snapshots)
        if s.num_preempted == 0 and llumnix_freeness(s) > LLUMNIX_MIGRATE_OUT_FREENESS
    ]
    return sorted(dests, key=lambda s: (-llumnix_freeness(s), -s.num_free_blocks, s.instance_id))


def shortest_request(snapshot: InstanceSnapshot) -> RequestLoad:
    """Llumnix's `SR` choice: the running request with the fewest tokens (cheapest to copy)."""
    return min(snapshot.requests, key=lambda r: (r.num_context_tokens, r.request_id))


def llumnix(
    snapshots: Sequence[InstanceSnapshot], cache: ItemsCache | None = None
) -> list[MigrationDecision]:
    """Llumnix's defrag pairing: i-th most loaded source with i-th least loaded destination,
    each moving its shortest running request."""
    decisions = []
    for src, dst in zip(llumnix_sources(snapshots), llumnix_destinations(snapshots), strict=False):
        if src.instance_id == dst.instance_id:
            continue
        request = shortest_request(src)
        decisions.append(MigrationDecision(request.request_id, src.instance_id, dst.instance_id))
    return decisions


# Llumnix v1's rescheduler defaults (llumnix-project/llumnix, pkg/consts/consts.go):
# decode_load policy on kv_cache_usage_ratio_projected, a source at >= 1.0 and a destination
# below it, a pair kept only if the two differ by >= 0.01, requests picked shortest running
# first (SR) until >= 1 token is selected (rule TOKEN, value 1: one request), every 500 ms.
LLUMNIX_V1_DECODE_LOAD_THRESHOLD = 1.0
LLUMNIX_V1_LOAD_BALANCE_THRESHOLD = 0.01
LLUMNIX_V1_RESCHEDULE_INTERVAL_S = 0.5


def llumnix_v1(
    snapshots: Sequence[InstanceSnapshot], cache: ItemsCache | None = None
) -> list[MigrationDecision]:
    """Llumnix v1's `decode_load` rescheduling: sources (projected usage >= the threshold)
    most loaded first, destinations (below it) least loaded first, each instance in at most
    one pair (`metricBalanceSelector`); a pair whose loads differ by less than the
    load-balance threshold is dropped; the source sends its shortest running request."""
    idle = _idle(snapshots)
    load = {s.instance_id: kv_cache_usage_ratio_projected(s) for s in idle}
    sources = [
        s for s in idle if s.requests and load[s.instance_id] >= LLUMNIX_V1_DECODE_LOAD_THRESHOLD
    ]
    dests = [s for s in idle if load[s.instance_id] < LLUMNIX_V1_DECODE_LOAD_THRESHOLD]
    sources.sort(key=lambda s: (-load[s.instance_id], s.instance_id))
    dests.sort(key=lambda s: (load[s.instance_id], s.instance_id))
    decisions = []
    for src, dst in zip(sources, dests, strict=False):  # the two lists are disjoint
        if load[src.instance_id] - load[dst.instance_id] < LLUMNIX_V1_LOAD_BALANCE_THRESHOLD:
            continue
        request = shortest_request(src)
        decisions.append(MigrationDecision(request.request_id, src.instance_id, dst.instance_id))
    return decisions


@dataclass(frozen=True, slots=True)
class StarRebalanceParams:
    """Tuning of STAR's rebalancing; the defaults are what docs/policies.md justifies."""

    weighting: StarWeighting = StarWeighting("dynamic")
    imbalance_threshold: float = 0.1  # score distance from the mean that makes a src/dst
    urgent_steps: float = 48.0  # predicted steps to KV exhaustion that call for relief (3 blocks)
    min_remaining_tokens: float = 16.0  # a request about to finish is not worth moving
    min_gain: float = 0.01  # a move must lower the pair's peak score by this much
    max_candidates: int = 8  # what-if evaluations per pair (keeps a round O(n log n))
    destination_headroom: float = 0.02  # keep free on dst: vLLM's 1% watermark + growth
    # STAR (v2) on top of the v1 plan: nothing moves unless some instance is short of KV
    # (`load.under_pressure`); relief reads the upper (P90) remaining length, since running
    # out of blocks is the risk there; a balance move must buy at least as many tokens of
    # growth off the source as it copies over the link (the cost of a migration is its KV
    # bytes and the final stage's pause, both proportional to the context copied)
    pressure_gate: bool = False
    relief_remaining_factor: float = 1.0
    min_growth_per_copied_token: float = 0.0
    # act only while some instance has preempted requests waiting (memory actually ran out),
    # and then only relieve: measured on the suite, anticipatory relief and the balance pass
    # cost more (KV copies, destination blocks held during the copy) than they saved
    reactive: bool = False
    balance: bool = True


def _blocks(num_tokens: int, block_size: int) -> int:
    return math.ceil((num_tokens + 1) / block_size)


def best_request_to_move(
    src: InstanceSnapshot,
    dst: InstanceSnapshot,
    scores: dict[int, float],
    ctx: StarContext,
    params: StarRebalanceParams,
) -> RequestLoad | None:
    """Among src's `max_candidates` largest requests (context + predicted remaining) that fit
    dst and are not about to finish, the one whose move leaves max(src score, dst score)
    lowest; None unless that beats src's score today by `min_gain`."""
    headroom = int(params.destination_headroom * dst.num_total_blocks)
    free_blocks = dst.num_free_blocks - dst.num_waiting_blocks - headroom
    eligible = [
        r
        for r in src.requests
        if predicted_remaining(r) >= params.min_remaining_tokens
        and predicted_remaining(r) >= params.min_growth_per_copied_token * r.num_context_tokens
        and _blocks(r.num_context_tokens, dst.block_size) <= free_blocks
    ]
    eligible.sort(key=lambda r: (-(r.num_context_tokens + predicted_remaining(r)), r.request_id))
    src_items = {
        r.request_id: (float(r.num_context_tokens), predicted_remaining(r)) for r in src.requests
    }
    dst_items = instance_items(dst)
    best: RequestLoad | None = None
    best_peak = scores[src.instance_id] - params.min_gain
    for request in eligible[: params.max_candidates]:
        moved = src_items[request.request_id]
        src_after = score_of_items(
            src, [v for k, v in src_items.items() if k != request.request_id], ctx
        )
        dst_after, dst_overflow = load_of_items(dst, [*dst_items, moved], ctx)
        if dst_overflow < params.urgent_steps * 4:  # would soon press the destination
            continue
        peak = max(src_after, dst_after)
        if peak < best_peak:
            best, best_peak = request, peak
    return best


def relief_request(
    src: InstanceSnapshot, dst: InstanceSnapshot, params: StarRebalanceParams
) -> RequestLoad | None:
    """For an instance about to run out of blocks: the request with the most predicted growth
    still to come (moving it relieves the source longest) that fits dst with headroom."""
    headroom = int(params.destination_headroom * dst.num_total_blocks)
    free_blocks = dst.num_free_blocks - dst.num_waiting_blocks - headroom
    eligible = [
        r
        for r in src.requests
        if predicted_remaining(r) >= params.min_remaining_tokens
        and _blocks(r.num_context_tokens, dst.block_size) <= free_blocks
    ]
    if not eligible:
        return None
    return max(
        eligible, key=lambda r: (predicted_remaining(r), -r.num_context_tokens, r.request_id)
    )


def star_plan(
    snapshots: Sequence[InstanceSnapshot],
    params: StarRebalanceParams,
    cache: ItemsCache | None = None,
) -> list[MigrationDecision]:
    """Two passes. Relief: instances about to run out of blocks (or preempting) send their
    fastest-growing request to the instances with the most free blocks. Balance: the
    highest-scoring remaining instances send, each to one of the lowest-scoring ones, the
    request that best evens the pair's scores."""
    if len(snapshots) < 2 or (params.pressure_gate and not under_pressure(snapshots)):
        return []
    if params.reactive and not any(s.num_preempted > 0 for s in snapshots):
        return []
    items = cluster_item_arrays(snapshots, cache)
    ctx = star_context(snapshots, params.weighting)
    loads = cluster_loads(snapshots, items, ctx)
    scores = {i: load[0] for i, load in loads.items()}
    if params.relief_remaining_factor != 1.0:
        loads = cluster_loads(snapshots, items, ctx, params.relief_remaining_factor)
    overflow = {i: load[1] for i, load in loads.items()}
    mean = sum(scores.values()) / len(scores)
    idle = _idle(snapshots)

    def urgent(s: InstanceSnapshot) -> bool:
        return s.num_preempted > 0 or overflow[s.instance_id] < params.urgent_steps

    decisions: list[MigrationDecision] = []
    used: set[int] = set()
    pressed = sorted(
        (s for s in idle if s.requests and urgent(s)),
        key=lambda s: (-s.num_preempted, overflow[s.instance_id], s.instance_id),
    )
    roomy = sorted(
        (s for s in idle if not urgent(s)),
        key=lambda s: (-overflow[s.instance_id], -s.num_free_blocks, s.instance_id),
    )
    for src, dst in zip(pressed, roomy, strict=False):
        request = relief_request(src, dst, params)
        if request is not None:
            decisions.append(
                MigrationDecision(request.request_id, src.instance_id, dst.instance_id)
            )
            used.update((src.instance_id, dst.instance_id))
    if not params.balance:
        return decisions
    free = [s for s in idle if s.instance_id not in used and not urgent(s)]
    sources = [
        s for s in free if s.requests and scores[s.instance_id] > mean + params.imbalance_threshold
    ]
    sources.sort(key=lambda s: (-scores[s.instance_id], s.instance_id))
    dests = [s for s in free if scores[s.instance_id] < mean - params.imbalance_threshold]
    dests.sort(key=lambda s: (scores[s.instance_id], s.instance_id))
    for src, dst in zip(sources, dests, strict=False):
        request = best_request_to_move(src, dst, scores, ctx, params)
        if request is not None:
            decisions.append(
                MigrationDecision(request.request_id, src.instance_id, dst.instance_id)
            )
    return decisions


def _star_rebalance(params: StarRebalanceParams) -> RebalanceFn:
    def rebalance(
        snapshots: Sequence[InstanceSnapshot], cache: ItemsCache | None = None
    ) -> list[MigrationDecision]:
        return star_plan(snapshots, params, cache)

    rebalance.__name__ = f"star_rebalance_{params.weighting.mode}"
    return rebalance


REBALANCE_POLICIES: dict[str, RebalanceFn] = {
    "none": no_migration,
    "llumnix": llumnix,
    "llumnix_v1": llumnix_v1,
    "star": _star_rebalance(
        StarRebalanceParams(
            pressure_gate=True,
            relief_remaining_factor=UPPER_QUANTILE_FACTOR,
            min_growth_per_copied_token=1.0,
            reactive=True,
            balance=False,
        )
    ),
    "star_anticipatory": _star_rebalance(
        StarRebalanceParams(
            pressure_gate=True,
            relief_remaining_factor=UPPER_QUANTILE_FACTOR,
            min_growth_per_copied_token=1.0,
        )
    ),
    "star_v1": _star_rebalance(StarRebalanceParams()),
    "star_current_only": _star_rebalance(StarRebalanceParams(StarWeighting("current"))),
    "star_predicted_only": _star_rebalance(StarRebalanceParams(StarWeighting("predicted"))),
}
