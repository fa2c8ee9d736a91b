"""Load measures that policies compare: Llumnix's freeness and the STAR score.

STAR score of a decode instance (see docs/policies.md for the derivation):

    score = (1 - w) * current + w * future
    current = KV tokens held now (+ blocks promised to waiting requests) / KV capacity
    future  = mean KV tokens the running requests will hold over the next H decode steps
              / KV capacity, from each request's predicted remaining length m:
              f(c, m) = min(m, H) * (c + min(m, H) / 2) / H    (context c grows 1 per step
              until the request finishes after m steps, then frees its KV)
    H       = mean predicted remaining length over all running requests in the cluster
              (the time scale on which the current population turns over)
    w       = 0.5 + 0.5 * u, u = the cluster's KV utilisation (0..1)

`w` is dynamic: on an idle cluster today's tokens and the next H steps' tokens matter about
equally; as memory fills up, the growth still to come is what exhausts an instance and forces
preemptions, so predictions get the larger share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from starserve.policy.types import InstanceSnapshot, NewRequest, RequestLoad

WeightMode = Literal["dynamic", "current", "predicted"]
MIN_DYNAMIC_WEIGHT = 0.5


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


def predicted_remaining(request: RequestLoad) -> float:
    """The request's predicted remaining tokens; without a prediction yet, as many as it has
    generated so far (at least 1) — the median-unbiased guess for a heavy-tailed length."""
    if request.predicted_remaining_tokens is not None:
        return max(0.0, request.predicted_remaining_tokens)
    return float(max(1, request.num_generated_tokens))


def future_tokens(num_context_tokens: float, remaining_tokens: float, horizon: float) -> float:
    """Mean KV tokens a request holds over the next `horizon` decode steps."""
    steps = min(remaining_tokens, horizon)
    return steps * (num_context_tokens + steps / 2.0) / horizon


def cluster_horizon(snapshots: Sequence[InstanceSnapshot]) -> float:
    """H: mean predicted remaining length of all running requests (at least 1)."""
    total = 0.0
    count = 0
    for snapshot in snapshots:
        for request in snapshot.requests:
            total += predicted_remaining(request)
            count += 1
    return max(1.0, total / count) if count else 1.0


def cluster_utilization(snapshots: Sequence[InstanceSnapshot]) -> float:
    total = sum(s.num_total_blocks for s in snapshots)
    used = sum(s.num_used_blocks + s.num_waiting_blocks for s in snapshots)
    return used / total if total else 0.0


@dataclass(frozen=True, slots=True)
class StarContext:
    """Cluster-wide quantities of one policy round: horizon H and weight w."""

    horizon: float
    weight: float


def star_context(snapshots: Sequence[InstanceSnapshot], weighting: StarWeighting) -> StarContext:
    return StarContext(
        horizon=cluster_horizon(snapshots),
        weight=weighting.weight(cluster_utilization(snapshots)),
    )


def request_score_tokens(request: RequestLoad, ctx: StarContext) -> float:
    """A running request's share of its instance's score, in tokens (before ÷ capacity)."""
    future = future_tokens(request.num_context_tokens, predicted_remaining(request), ctx.horizon)
    return (1.0 - ctx.weight) * request.num_context_tokens + ctx.weight * future


def instance_score(snapshot: InstanceSnapshot, ctx: StarContext) -> float:
    """The STAR score of one instance (fraction of its KV capacity)."""
    waiting_tokens = snapshot.num_waiting_blocks * snapshot.block_size
    current = snapshot.num_used_blocks * snapshot.block_size + waiting_tokens
    future = waiting_tokens + sum(
        future_tokens(r.num_context_tokens, predicted_remaining(r), ctx.horizon)
        for r in snapshot.requests
    )
    mixed = (1.0 - ctx.weight) * current + ctx.weight * future
    return mixed / max(1, snapshot.kv_capacity_tokens)


def new_request_score_tokens(request: NewRequest, ctx: StarContext) -> float:
    """What a new request adds to an instance's score, in tokens."""
    remaining = (
        ctx.horizon
        if request.predicted_output_tokens is None
        else max(0.0, request.predicted_output_tokens)
    )
    future = future_tokens(request.num_prompt_tokens, remaining, ctx.horizon)
    return (1.0 - ctx.weight) * request.num_prompt_tokens + ctx.weight * future


def star_dispatch_scores(
    snapshots: Sequence[InstanceSnapshot], request: NewRequest, weighting: StarWeighting
) -> dict[int, float]:
    """Each instance's STAR score if `request` were placed there."""
    ctx = star_context(snapshots, weighting)
    added = new_request_score_tokens(request, ctx)
    return {
        s.instance_id: instance_score(s, ctx) + added / max(1, s.kv_capacity_tokens)
        for s in snapshots
    }
