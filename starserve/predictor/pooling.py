"""Pools of a request's generated-token states, rebuilt from a collection's segment pools.

A collection with `pool_states` stores, per tap, pools over the *segment* of tokens since the
previous tap (data.POOL_ARRAYS). Pools over longer runs follow exactly from them:

* entropy pool over every generated token so far (PLP / EGTP): the segments' entropy pools
  combined with weights sum e^H, i.e. softmax(H) over all tokens generated so far;
* recent pool: the plain mean of the states of the last `num_segments` segments.

Points are sorted by (request, tokens generated), so a request's taps are one contiguous run.
"""

from __future__ import annotations

import numpy as np

from starserve.errors import StarserveError
from starserve.predictor.data import Dataset


def require_pools(ds: Dataset) -> None:
    if "pool_entropy" not in ds.pools or "pool_weight" not in ds.pools:
        raise StarserveError(
            "the data has no token-entropy pools (collected before `--pool-states`); "
            "PLP needs a collection made with them"
        )


def _group_cumsum(values: np.ndarray, point_request: np.ndarray) -> np.ndarray:
    """Running sum along points, restarting at each request's first point."""
    total = np.cumsum(values, axis=0)
    starts = np.flatnonzero(np.r_[True, point_request[1:] != point_request[:-1]])
    run_index = np.cumsum(np.r_[True, point_request[1:] != point_request[:-1]]) - 1
    before = np.zeros_like(total[:1]).repeat(len(starts), axis=0)
    before[1:] = total[starts[1:] - 1]
    return total - before[run_index]


def entropy_pool(ds: Dataset) -> np.ndarray:
    """[P, H] float32: sum_t softmax(H)_t h_t over all tokens generated up to each tap."""
    require_pools(ds)
    weight = ds.pools["pool_weight"].astype(np.float64)
    weighted = ds.pools["pool_entropy"].astype(np.float32) * weight[:, None].astype(np.float32)
    pooled = _group_cumsum(weighted, ds.point_request)
    mass = _group_cumsum(weight, ds.point_request)
    return (pooled / np.maximum(mass, 1e-12)[:, None]).astype(np.float32)


def recent_pool(ds: Dataset, num_segments: int) -> np.ndarray:
    """[P, H] float32: plain mean of the states of the last `num_segments` segments' tokens."""
    if "pool_mean" not in ds.pools:
        raise StarserveError("the data has no segment pools (collected before `--pool-states`)")
    counts = np.diff(np.r_[0, ds.point_generated]).astype(np.float64)
    first = np.r_[True, ds.point_request[1:] != ds.point_request[:-1]]
    counts[first] = 1.0  # a request's first tap covers its first token only
    weighted = ds.pools["pool_mean"].astype(np.float32) * counts[:, None].astype(np.float32)
    sums, mass = _group_cumsum(weighted, ds.point_request), _group_cumsum(counts, ds.point_request)
    shift = num_segments
    run_index = np.cumsum(first) - 1
    position = np.arange(ds.num_points) - np.flatnonzero(first)[run_index]  # tap number in run
    back = np.arange(ds.num_points) - shift
    has_back = position >= shift
    sums_back = np.where(has_back[:, None], sums[np.maximum(back, 0)], 0.0)
    mass_back = np.where(has_back, mass[np.maximum(back, 0)], 0.0)
    return ((sums - sums_back) / np.maximum(mass - mass_back, 1.0)[:, None]).astype(np.float32)
