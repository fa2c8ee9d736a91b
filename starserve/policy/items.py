"""The (context, predicted remaining) items STAR reads of every request, as numpy arrays, and
a memo that builds them once per instance snapshot.

Reading 16k `RequestLoad`s is most of a 256-instance STAR round, and one round reads them
twice (dispatch, then the migration plan); a simulator or controller dispatching many requests
between two polls reads the same snapshots again and again. Snapshots are frozen, so an
instance whose snapshot carries the very same `requests` and `incoming` tuples (identity, not
equality) has the very same items: `ItemsCache` keeps each instance's arrays while that holds.
A policy that gets a cache returns exactly what it returns without one; only its speed differs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter

import numpy as np

from starserve.policy.types import InstanceSnapshot, RequestLoad
from starserve.policy.vector import order_within_groups

_context_of = attrgetter("num_context_tokens")
_prediction_of = attrgetter("predicted_remaining_tokens")
_generated_of = attrgetter("num_generated_tokens")


@dataclass(frozen=True, slots=True, eq=False)  # compared by identity (holds arrays)
class InstanceItems:
    """One instance's running and incoming requests, ordered by predicted remaining length
    (ties in request order, as a stable sort leaves them), as STAR's profiles walk them."""

    context: np.ndarray  # float64 KV tokens held
    remaining: np.ndarray  # float64 `load.predicted_remaining` of each request (ascending)
    remaining_in_request_order: np.ndarray  # the same, running then incoming requests

    def remaining_total(self) -> float:
        """Sum of the predicted remaining lengths, added in request order (as Python's
        sum() over the requests adds them)."""
        return sum(self.remaining_in_request_order.tolist(), 0.0)


@dataclass(frozen=True, slots=True, eq=False)
class ClusterItems:
    """Every instance's items, instance after instance (in snapshot order), each instance's
    ordered as `InstanceItems` orders them."""

    context: np.ndarray
    remaining: np.ndarray
    sizes: np.ndarray  # int64 items per instance
    instances: tuple[InstanceItems, ...]  # what the arrays were built from

    def horizon(self) -> float:
        """H: mean predicted remaining length of all requests (at least 1)."""
        count = int(self.sizes.sum())
        if count == 0:
            return 1.0
        total = 0.0
        for instance in self.instances:
            total += instance.remaining_total()
        return max(1.0, total / count)

    def with_item_each(self, context: float, remaining: float) -> ClusterItems:
        """The same items plus one more (`context`, `remaining`) in every instance, after its
        items with remaining <= `remaining` (where a stable sort of its requests followed by
        the new one puts it): each instance as it would be if it got the request."""
        ends = np.cumsum(self.sizes)
        # items of each group at or below `remaining`: a prefix, since groups are ordered
        at_or_below = np.concatenate(([0], np.cumsum(self.remaining <= remaining)))
        below_count = at_or_below[ends] - at_or_below[ends - self.sizes]
        positions = ends - self.sizes + below_count
        return ClusterItems(
            context=np.insert(self.context, positions, context),
            remaining=np.insert(self.remaining, positions, remaining),
            sizes=self.sizes + 1,
            instances=self.instances,  # H stays the cluster's before the request
        )


def predicted_remaining_array(requests: Sequence[RequestLoad]) -> np.ndarray:
    """`load.predicted_remaining` of every request, vectorised: a prediction floored at 0;
    without one, as many tokens as generated so far (at least 1)."""
    predicted = np.array(list(map(_prediction_of, requests)), dtype=np.float64)  # None -> nan
    remaining = np.where(predicted > 0.0, predicted, 0.0)
    missing = np.isnan(predicted)
    if missing.any():
        generated = np.fromiter(map(_generated_of, requests), np.float64, count=len(requests))
        remaining[missing] = np.maximum(generated[missing], 1.0)
    return remaining


def _requests_of(snapshot: InstanceSnapshot) -> tuple[RequestLoad, ...]:
    return snapshot.requests + snapshot.incoming if snapshot.incoming else snapshot.requests


def build_instance_items(snapshots: Sequence[InstanceSnapshot]) -> list[InstanceItems]:
    """The items of each snapshot, built from its requests in one batch (no memo)."""
    groups = [_requests_of(s) for s in snapshots]
    sizes = np.fromiter(map(len, groups), np.int64, count=len(groups))
    requests = list(itertools.chain.from_iterable(groups))
    context = np.fromiter(map(_context_of, requests), np.float64, count=len(requests))
    in_request_order = predicted_remaining_array(requests)
    order = order_within_groups(in_request_order, sizes)
    context, remaining = context[order], in_request_order[order]
    ends = np.cumsum(sizes).tolist()
    return [
        InstanceItems(context[start:end], remaining[start:end], in_request_order[start:end])
        for start, end in zip([0, *ends[:-1]], ends, strict=True)
    ]


def combine(instances: Sequence[InstanceItems]) -> ClusterItems:
    """One cluster's items from its instances' (in snapshot order)."""
    sizes = np.fromiter((len(i.context) for i in instances), np.int64, count=len(instances))
    return ClusterItems(
        context=np.concatenate([i.context for i in instances]) if instances else np.empty(0),
        remaining=np.concatenate([i.remaining for i in instances]) if instances else np.empty(0),
        sizes=sizes,
        instances=tuple(instances),
    )


@dataclass(slots=True)
class ItemsCache:
    """Each instance's latest `InstanceItems`, reused while its snapshot's request tuples are
    the same objects, and the latest cluster arrays, reused while every instance's items are.
    One per policy runner (it holds at most one entry per instance id)."""

    _entries: dict[int, tuple[tuple[RequestLoad, ...], tuple[RequestLoad, ...], InstanceItems]] = (
        field(default_factory=dict)
    )
    _latest: ClusterItems | None = None

    def cluster(self, snapshots: Sequence[InstanceSnapshot]) -> ClusterItems:
        instances = self._instances(snapshots)
        latest = self._latest
        if latest is None or latest.instances != tuple(instances):  # identity, element-wise
            latest = self._latest = combine(instances)
        return latest

    def _cached(self, snapshot: InstanceSnapshot) -> InstanceItems | None:
        entry = self._entries.get(snapshot.instance_id)
        if entry is not None and entry[0] is snapshot.requests and entry[1] is snapshot.incoming:
            return entry[2]
        return None

    def _instances(self, snapshots: Sequence[InstanceSnapshot]) -> list[InstanceItems]:
        """Every snapshot's items, building the ones not cached in one batch."""
        found = [self._cached(s) for s in snapshots]
        stale = [s for s, items in zip(snapshots, found, strict=True) if items is None]
        built = iter(build_instance_items(stale) if stale else ())
        result = []
        for snapshot, items in zip(snapshots, found, strict=True):
            if items is None:
                items = next(built)
                # holding the tuples keeps their ids from being reused while the entry lives
                entry = (snapshot.requests, snapshot.incoming, items)
                self._entries[snapshot.instance_id] = entry
            result.append(items)
        return result


def cluster_item_arrays(
    snapshots: Sequence[InstanceSnapshot], cache: ItemsCache | None = None
) -> ClusterItems:
    """Every instance's items (through `cache` when given)."""
    if cache is None:
        return combine(build_instance_items(snapshots))
    return cache.cluster(snapshots)
