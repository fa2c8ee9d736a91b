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
    flat = np.array(list(itertools.chain.from_iterable(items_per_instance)), dtype=np.float64)
    flat = flat.reshape(-1, 2)
    order = order_within_groups(flat[:, 1], sizes)
    return profiles_of_arrays(flat[order, 0], flat[order, 1], sizes, capacities, bases)


def order_within_groups(remaining: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The permutation that orders each group (`sizes` items each, groups contiguous) by
    remaining, ties in input order, keeping groups in place: `np.lexsort((remaining, group))`,
    computed as one stable sort per row of a (groups x largest group) grid padded with +inf
    (padding sits after every real item, equal or not, because the sort is stable)."""
    num, total = len(sizes), len(remaining)
    if total == 0:
        return np.empty(0, dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    column = np.arange(total) - np.repeat(starts, sizes)
    grid = np.full((num, int(sizes.max())), np.inf)
    grid[np.repeat(np.arange(num), sizes), column] = remaining
    by_row = np.argsort(grid, axis=1, kind="stable")
    return (by_row + starts[:, None])[np.arange(grid.shape[1])[None, :] < sizes[:, None]]


def profiles_of_arrays(
    context: np.ndarray,
    remaining: np.ndarray,
    sizes: np.ndarray,
    capacities: np.ndarray,
    bases: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`cluster_profiles` of items given as flat arrays, instance after instance (`sizes`
    items each), each instance's items already ordered by remaining, ties in input order
    (`order_within_groups`; `items.ClusterItems` keeps them so)."""
    num = len(sizes)
    current = bases.astype(np.float64).copy()
    peak = current.copy()
    overflow = np.where(current > capacities, 0.0, np.inf)
    total = int(sizes.sum())
    if total == 0:
        return current, peak, overflow
    group = np.repeat(np.arange(num), sizes)
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
