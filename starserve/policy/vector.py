"""`future_profile` for every instance of a cluster at once (numpy), for large rounds.

Same definitions as `load.future_profile`: items sorted by predicted remaining length m within
each instance; before the j-th finish, `live_j` tokens belong to the `alive_j` sequences still
running, the most they reach is `live_j + alive_j * m_j`, and the first crossing of the capacity
is `max(m_{j-1}, (capacity - live_j) / alive_j)`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


def cluster_profiles(
    items_per_instance: Sequence[Sequence[tuple[float, float]]],
    capacities: np.ndarray,
    bases: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(current, peak, overflow steps) per instance, in input order."""
    num = len(items_per_instance)
    sizes = np.fromiter((len(items) for items in items_per_instance), dtype=np.int64, count=num)
    current = bases.astype(np.float64).copy()
    peak = current.copy()
    overflow = np.where(current > capacities, 0.0, np.inf)
    total = int(sizes.sum())
    if total == 0:
        return current, peak, overflow
    flat = np.array(list(itertools.chain.from_iterable(items_per_instance)), dtype=np.float64)
    group = np.repeat(np.arange(num), sizes)
    order = np.lexsort((flat[:, 1], group))
    context, remaining, group = flat[order, 0], flat[order, 1], group[order]
    ends = np.cumsum(sizes)
    starts = ends - sizes
    sums = np.bincount(group, weights=context, minlength=num)
    current += sums
    cumulative = np.cumsum(context) - context  # tokens of earlier items, all groups
    group_offset = np.repeat(cumulative[np.minimum(starts, total - 1)], sizes)
    live = bases[group] + sums[group] - (cumulative - group_offset)
    alive = ends[group] - np.arange(total)
    top = live + alive * remaining
    busy = sizes > 0
    peak_top = np.full(num, -np.inf)
    peak_top[busy] = np.maximum.reduceat(top, starts[busy])
    peak = np.maximum(current, peak_top)
    previous = np.concatenate(([0.0], remaining[:-1]))
    previous[starts[busy]] = 0.0
    crossing = np.maximum(previous, (capacities[group] - live) / alive)
    index = np.where(top > capacities[group], np.arange(total), total)
    first = np.full(num, total)
    first[busy] = np.minimum.reduceat(index, starts[busy])
    found = (first < total) & np.isinf(overflow)
    overflow[found] = crossing[first[found]]
    return current, peak, overflow
