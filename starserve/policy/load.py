"""Load measures that policies compare: Llumnix's freeness and the STAR score.

STAR score of a decode instance (see docs/policies.md for the derivation):

    score = ((1 - w) * current + w * peak) / KV capacity
    current = KV tokens held now (+ tokens promised to waiting requests)
    peak    = the most KV tokens the instance will hold if nothing new arrives, from each
              running request's context c and predicted remaining length m: it holds c + t
              tokens at step t < m, then frees them; max over t of the sum
    w       = 0.5 + 0.5 * u, u = the cluster's KV utilisation (0..1)

`w` is dynamic: on an idle cluster nothing is near exhaustion and today's load (which sets
today's iteration time) matters as much as the future; as memory fills up, the growth still
to come is what exhausts an instance and forces preemptions, so predictions get the larger
share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Literal

import numpy as np

from starserve.policy.items import ClusterItems, ItemsCache, cluster_item_arrays
from starserve.policy.types import InstanceSnapshot, NewRequest, RequestLoad
from starserve.policy.vector import profiles_of_arrays

WeightMode = Literal["dynamic", "current", "predicted"]
MIN_DYNAMIC_WEIGHT = 0.5
# Real memory pressure: an instance whose KV in use plus promised reaches this fraction of its
# capacity, or that has preempted requests waiting. Below it on every instance, nothing can
# run out of blocks within a migration's reach (a full batch of 256 sequences needs >= 0.2 x
# capacity / 256 steps, ~90 steps = ~2 s for Llama-2-7B on an H100, against ~50 ms to migrate):
# STAR then dispatches on current load and migrates nothing.
PRESSURE_UTILIZATION = 0.8
# Upper (P90) remaining length from a point prediction: the shipped error profile's 10th
# percentile of ln((pred + 1) / (true + 1)) is -0.50, so true + 1 <= (pred + 1) * e^0.5 nine
# times in ten. Where running out of KV is the risk, STAR plans with this bound.
UPPER_QUANTILE_FACTOR = math.exp(0.5)


@dataclass(frozen=True, slots=True)
class StarWeighting:
    """Which part of the STAR score counts: `dynamic` (the formula), `current` (w = 0) or
    `predicted` (w = 1) — the two ablations."""

    mode: WeightMode = "dynamic"

    def weight(self, cluster_utilization: float) -> float:
        if self.mode == "current":
            return 0.0
        if self.mode == "predicted":
            return 1.0
        u = min(1.0, max(0.0, cluster_utilization))
        return MIN_DYNAMIC_WEIGHT + (1.0 - MIN_DYNAMIC_WEIGHT) * u


def llumnix_freeness(snapshot: InstanceSnapshot) -> float:
    """Llumnix's migration load: free KV blocks per running request (inf when idle)."""
    num_running = len(snapshot.requests)
    if num_running == 0:
        return math.inf
    return snapshot.num_free_blocks / num_running


def llumnix_dispatch_freeness(snapshot: InstanceSnapshot) -> float:
    """Llumnix's dispatch load: blocks left after the waiting queue's demand, per request
    (running + waiting); inf when the instance has no request at all."""
    num_requests = len(snapshot.requests) + snapshot.num_waiting
    available = snapshot.num_free_blocks - snapshot.num_waiting_blocks
    if num_requests == 0:
        return math.inf
    return available / num_requests


def kv_cache_usage_ratio_projected(snapshot: InstanceSnapshot) -> float:
    """Llumnix v1's decode load metric (`kv_cache_usage_ratio_projected`): KV tokens in use
    plus those already promised (waiting prefills/decodes, decodes dispatched but not yet
    running), over the instance's KV capacity. Requests dispatched here that wait for blocks
    are `num_waiting_blocks`; those whose KV is in transfer already hold their blocks."""
    capacity = snapshot.num_total_blocks
    if capacity <= 0:
        return math.inf
    return (snapshot.num_used_blocks + snapshot.num_waiting_blocks) / capacity


def num_queued_requests(snapshot: InstanceSnapshot) -> int:
    """Requests sent to the instance and not finished (running, waiting, KV in transfer):
    the queue length Ray Serve's power-of-two-choices router compares."""
    pending = len(snapshot.incoming) if snapshot.incoming else snapshot.num_waiting
    return len(snapshot.requests) + pending


def under_pressure(snapshots: Sequence[InstanceSnapshot]) -> bool:
    """Some instance is short of KV (projected usage >= PRESSURE_UTILIZATION) or preempting.
    Reads only aggregates, so a caller may decide it on snapshots without `requests`."""
    return any(
        s.num_preempted > 0 or kv_cache_usage_ratio_projected(s) >= PRESSURE_UTILIZATION
        for s in snapshots
    )


def predicted_remaining(request: RequestLoad) -> float:
    """The request's predicted remaining tokens; without a prediction yet, as many as it has
    generated so far (at least 1) — the median-unbiased guess for a heavy-tailed length."""
    predicted = request.predicted_remaining_tokens
    if predicted is not None:
        return predicted if predicted > 0.0 else 0.0
    generated = request.num_generated_tokens
    return float(generated if generated > 1 else 1)


def cluster_utilization(snapshots: Sequence[InstanceSnapshot]) -> float:
    total = sum(s.num_total_blocks for s in snapshots)
    used = sum(s.num_used_blocks + s.num_waiting_blocks for s in snapshots)
    return used / total if total else 0.0


@dataclass(frozen=True, slots=True)
class StarContext:
    """Cluster-wide quantities of one policy round: weight w."""

    weight: float
    uses_predictions: bool = True  # False: the current-load-only ablation


def star_context(snapshots: Sequence[InstanceSnapshot], weighting: StarWeighting) -> StarContext:
    """This round's w."""
    return StarContext(
        weight=weighting.weight(cluster_utilization(snapshots)),
        uses_predictions=weighting.mode != "current",
    )


def peak_tokens(items: Sequence[tuple[float, float]], base_tokens: float = 0.0) -> float:
    """The highest KV the (context, remaining) sequences will hold if no new work arrives:
    K(t) = base + sum over sequences still running at step t of (context + t); the maximum
    is at t = 0 or just before one of them finishes. O(n log n)."""
    if not items:
        return base_tokens
    ordered = sorted(items, key=lambda item: item[1])
    suffix_context = sum(context for context, _ in ordered)
    peak = base_tokens + suffix_context
    for index, (context, remaining) in enumerate(ordered):
        alive = len(ordered) - index
        peak = max(peak, base_tokens + suffix_context + alive * remaining)
        suffix_context -= context
    return peak


def overflow_steps(
    items: Sequence[tuple[float, float]], capacity_tokens: float, base_tokens: float = 0.0
) -> float:
    """Decode steps until the (context, remaining) sequences outgrow `capacity_tokens` if no
    new work arrives (inf: never; 0: already). Between two predicted finishes K(t) grows by
    one token per live sequence per step; every finish frees that sequence's tokens."""
    ordered = sorted(items, key=lambda item: item[1])
    live_context = base_tokens + sum(context for context, _ in ordered)
    if live_context > capacity_tokens:
        return 0.0
    start = 0.0
    for index, (context, remaining) in enumerate(ordered):
        alive = len(ordered) - index
        crossing = (capacity_tokens - live_context) / alive
        if crossing < remaining:
            return max(start, crossing)
        start = remaining
        live_context -= context
    return math.inf


def future_profile(
    items: Sequence[tuple[float, float]], capacity_tokens: float, base_tokens: float = 0.0
) -> tuple[float, float]:
    """(`peak_tokens`, `overflow_steps`) in one sort: what policies evaluate per instance."""
    ordered = sorted(items, key=itemgetter(1))
    live = base_tokens + sum(map(itemgetter(0), ordered))
    peak = live
    overflow = 0.0 if live > capacity_tokens else math.inf
    start = 0.0
    alive = len(ordered)
    for context, remaining in ordered:
        top = live + alive * remaining
        if top > peak:
            peak = top
        if overflow == math.inf and top > capacity_tokens:
            overflow = max(start, (capacity_tokens - live) / alive)
        start = remaining
        live -= context
        alive -= 1
    return peak, overflow


def instance_items(snapshot: InstanceSnapshot) -> list[tuple[float, float]]:
    """(context, predicted remaining) of the running and the incoming requests."""
    items = [(r.num_context_tokens, predicted_remaining(r)) for r in snapshot.requests]
    if snapshot.incoming:
        items += [(r.num_context_tokens, predicted_remaining(r)) for r in snapshot.incoming]
    return items  # type: ignore[return-value]  # int contexts are fine where floats are


def _untracked_waiting_tokens(snapshot: InstanceSnapshot) -> int:
    """Waiting demand known only as a block count (when `incoming` is not filled in)."""
    if snapshot.incoming:
        return 0
    return snapshot.num_waiting_blocks * snapshot.block_size


def instance_score(snapshot: InstanceSnapshot, ctx: StarContext) -> float:
    """The STAR score of one instance (fraction of its KV capacity)."""
    return score_of_items(snapshot, instance_items(snapshot), ctx)


def score_of_items(
    snapshot: InstanceSnapshot, items: Sequence[tuple[float, float]], ctx: StarContext
) -> float:
    """Score of `snapshot` if its running sequences were `items` (what-if for moves)."""
    return load_of_items(snapshot, items, ctx)[0]


def load_of_items(
    snapshot: InstanceSnapshot, items: Sequence[tuple[float, float]], ctx: StarContext
) -> tuple[float, float]:
    """(score, predicted steps until the KV blocks run out) if the running sequences were
    `items`; inf steps when the prediction says they never will."""
    capacity = max(1, snapshot.kv_capacity_tokens)
    waiting_tokens = _untracked_waiting_tokens(snapshot)
    current = waiting_tokens + sum(map(itemgetter(0), items))
    # the engine also keeps one partly filled block per sequence
    usable = capacity - snapshot.block_size * len(items)
    peak, overflow = future_profile(items, usable, waiting_tokens)
    if not ctx.uses_predictions:  # nothing is known to finish: growth only
        room = usable - current
        overflow = 0.0 if room < 0 else (room / len(items) if items else math.inf)
    mixed = (1.0 - ctx.weight) * current + ctx.weight * peak
    return mixed / capacity, overflow


def cluster_loads(
    snapshots: Sequence[InstanceSnapshot],
    items: ClusterItems,
    ctx: StarContext,
    remaining_factor: float = 1.0,
) -> dict[int, tuple[float, float]]:
    """`load_of_items` of every instance, vectorised (what one policy round evaluates);
    `remaining_factor` scales every (remaining + 1) first (an upper quantile: monotone, so
    the per-instance order of the items holds)."""
    capacity = np.array([max(1, s.kv_capacity_tokens) for s in snapshots], dtype=np.float64)
    sizes = items.sizes.astype(np.float64)
    usable = capacity - np.array([s.block_size for s in snapshots]) * sizes
    bases = np.array([_untracked_waiting_tokens(s) for s in snapshots], dtype=np.float64)
    remaining = items.remaining
    if remaining_factor != 1.0:
        remaining = (remaining + 1.0) * remaining_factor - 1.0
    current, peak, overflow = profiles_of_arrays(
        items.context, remaining, items.sizes, usable, bases
    )
    if not ctx.uses_predictions:  # nothing is known to finish: growth only
        room = usable - current
        with np.errstate(divide="ignore", invalid="ignore"):
            overflow = np.where(room < 0, 0.0, np.where(sizes > 0, room / sizes, np.inf))
    score = ((1.0 - ctx.weight) * current + ctx.weight * peak) / capacity
    return {
        s.instance_id: (score, steps)
        for s, score, steps in zip(snapshots, score.tolist(), overflow.tolist(), strict=True)
    }


def star_dispatch_loads(
    snapshots: Sequence[InstanceSnapshot],
    request: NewRequest,
    weighting: StarWeighting,
    cache: ItemsCache | None = None,
) -> dict[int, tuple[float, float]]:
    """Each instance's (STAR score, predicted steps to KV exhaustion) with `request` added."""
    items = cluster_item_arrays(snapshots, cache)
    ctx = star_context(snapshots, weighting)
    remaining = (
        items.horizon()
        if request.predicted_output_tokens is None
        else max(0.0, request.predicted_output_tokens)
    )
    with_new = items.with_item_each(float(request.num_prompt_tokens), remaining)
    return cluster_loads(snapshots, with_new, ctx)
