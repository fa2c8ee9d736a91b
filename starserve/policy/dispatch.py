"""Dispatch policies: which decode instance receives a request that has finished prefill.

Every dispatch function has the same signature,
`(snapshots, request, cursor, cache) -> (instance_id, next_cursor)`: pure, no hidden state. The
only state any of them needs (round robin's position) is the integer `cursor`, passed in and
returned; `starserve.policy.registry.PolicyRunner` keeps it between calls for its owner, along
with an `ItemsCache` (a memo of per-instance arrays: it changes the speed, never the answer;
None builds them afresh).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from starserve.policy.items import ItemsCache
from starserve.policy.load import (
    StarWeighting,
    kv_cache_usage_ratio_projected,
    llumnix_dispatch_freeness,
    num_queued_requests,
    star_dispatch_loads,
    under_pressure,
)
from starserve.policy.types import InstanceSnapshot, NewRequest

DispatchFn = Callable[
    [Sequence[InstanceSnapshot], NewRequest, int, ItemsCache | None], tuple[int, int]
]


def _require_instances(snapshots: Sequence[InstanceSnapshot]) -> None:
    if not snapshots:
        raise ValueError("dispatch needs at least one decode instance")


def round_robin(
    snapshots: Sequence[InstanceSnapshot],
    request: NewRequest,
    cursor: int,
    cache: ItemsCache | None = None,
) -> tuple[int, int]:
    """vLLM's toy disaggregated proxy: instances in turn, blind to load."""
    _require_instances(snapshots)
    return snapshots[cursor % len(snapshots)].instance_id, cursor + 1


def least_current_load(
    snapshots: Sequence[InstanceSnapshot],
    request: NewRequest,
    cursor: int,
    cache: ItemsCache | None = None,
) -> tuple[int, int]:
    """KV-cache-aware routing (llm-d, SGLang router, Dynamo): fewest KV tokens in use.

    Blocks already promised to waiting requests count as used; ties go to the lower id.
    """
    _require_instances(snapshots)
    best = min(
        snapshots,
        key=lambda s: ((s.num_used_blocks + s.num_waiting_blocks) * s.block_size, s.instance_id),
    )
    return best.instance_id, cursor


def llumnix_most_free(
    snapshots: Sequence[InstanceSnapshot],
    request: NewRequest,
    cursor: int,
    cache: ItemsCache | None = None,
) -> tuple[int, int]:
    """Llumnix's own dispatch: the instance with the highest freeness (free blocks left after
    the waiting requests' demand, per request)."""
    _require_instances(snapshots)
    best = max(snapshots, key=lambda s: (llumnix_dispatch_freeness(s), -s.instance_id))
    return best.instance_id, cursor


def llumnix_v1_least_projected(
    snapshots: Sequence[InstanceSnapshot],
    request: NewRequest,
    cursor: int,
    cache: ItemsCache | None = None,
) -> tuple[int, int]:
    """Llumnix v1's decode dispatch (load-balance policy, top-k 1): the lowest
    `kv_cache_usage_ratio_projected`. Its threshold filter (1.0) is skipped when no instance
    passes it, so the least loaded instance wins either way; ties go to the lower id."""
    _require_instances(snapshots)
    best = min(snapshots, key=lambda s: (kv_cache_usage_ratio_projected(s), s.instance_id))
    return best.instance_id, cursor


_MASK64 = (1 << 64) - 1


def splitmix64(state: int) -> tuple[int, int]:
    """One step of SplitMix64 (Steele et al., 2014): (next state, 64 random bits). The state
    is the runner's cursor, so a seeded runner draws the same instances on every run."""
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)


def power_of_two(
    snapshots: Sequence[InstanceSnapshot],
    request: NewRequest,
    cursor: int,
    cache: ItemsCache | None = None,
) -> tuple[int, int]:
    """Power of two choices (Mitzenmacher; Ray Serve LLM's default router, offered by SGLang
    and AIBrix): two distinct instances drawn at random from the RNG state `cursor`, the one
    with fewer requests in its queue wins (the first drawn on a tie)."""
    _require_instances(snapshots)
    n = len(snapshots)
    if n == 1:
        return snapshots[0].instance_id, cursor
    cursor, first_bits = splitmix64(cursor)
    cursor, second_bits = splitmix64(cursor)
    first = first_bits % n
    second = (first + 1 + second_bits % (n - 1)) % n  # uniform over the other n - 1
    a, b = snapshots[first], snapshots[second]
    best = b if num_queued_requests(b) < num_queued_requests(a) else a
    return best.instance_id, cursor


def _star_dispatch(weighting: StarWeighting) -> DispatchFn:
    def dispatch(
        snapshots: Sequence[InstanceSnapshot],
        request: NewRequest,
        cursor: int,
        cache: ItemsCache | None = None,
    ) -> tuple[int, int]:
        _require_instances(snapshots)
        loads = star_dispatch_loads(snapshots, request, weighting, cache)
        fits = [
            s
            for s in snapshots
            if s.num_free_blocks - s.num_waiting_blocks
            >= math.ceil(request.num_prompt_tokens / s.block_size)
        ]
        # where no placement is predicted to stay clear of KV exhaustion, delay it longest
        safe = [s for s in fits if loads[s.instance_id][1] == math.inf]
        if safe:
            best = min(safe, key=lambda s: (loads[s.instance_id][0], s.instance_id))
        else:
            best = min(
                fits or list(snapshots),
                key=lambda s: (-loads[s.instance_id][1], loads[s.instance_id][0], s.instance_id),
            )
        return best.instance_id, cursor

    dispatch.__name__ = f"star_dispatch_{weighting.mode}"
    dispatch.__doc__ = (
        f"Lowest STAR score after adding the request ({weighting.mode} weight), among the "
        "instances predicted never to run out of KV (else the one that runs out last)."
    )
    return dispatch


star_dynamic = _star_dispatch(StarWeighting("dynamic"))


def star_gated(
    snapshots: Sequence[InstanceSnapshot],
    request: NewRequest,
    cursor: int,
    cache: ItemsCache | None = None,
) -> tuple[int, int]:
    """STAR: while no instance is short of KV (`load.under_pressure`), the fewest KV tokens
    in use (today's load sets today's iteration time, and no placement can exhaust memory
    soon, so noisy predictions could only mislead); under pressure, the predictive score."""
    if not under_pressure(snapshots):
        return least_current_load(snapshots, request, cursor, cache)
    return star_dynamic(snapshots, request, cursor, cache)


star_current_only = _star_dispatch(StarWeighting("current"))
least_predicted_load = _star_dispatch(StarWeighting("predicted"))

DISPATCH_POLICIES: dict[str, DispatchFn] = {
    "round_robin": round_robin,
    "least_current_load": least_current_load,
    "least_predicted_load": least_predicted_load,
    "llumnix": llumnix_most_free,
    "llumnix_v1": llumnix_v1_least_projected,
    "power_of_two": power_of_two,
    "star": star_gated,
    "star_v1": star_dynamic,
    "star_current_only": star_current_only,
}
