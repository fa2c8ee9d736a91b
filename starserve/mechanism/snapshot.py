"""The snapshot contract, stated once, and the one builder both drivers call.

An `InstanceSnapshot` (starserve.policy.types) of a decode instance holds:

- `requests`: the requests decoding here now, one `RequestLoad` each: in the batch, holding
  their KV (a request being migrated away stays here while its copy stages run; once its
  final stage pauses it, it is in neither list of any instance).
- `incoming`: requests that belong here but do not decode yet: waiting for blocks (new, or
  preempted and to be recomputed), their prefill KV in transfer, or a migration importing
  them (from the first copied stage until the commit).
- `num_waiting`, `num_preempted`: how many of the incoming requests wait for blocks, and how
  many of those were preempted.
- `num_waiting_blocks`: the KV blocks the waiting requests will need before they can decode
  (requests whose KV is in transfer or being imported already hold a reservation, counted in
  `num_free_blocks`).
- `num_free_blocks`: blocks neither used by a request nor reserved for one.

The Ray worker (`starserve.cluster.worker`) and the simulated instance
(`starserve.sim.snapshots`) both describe their requests as the plain facts below and call
`build_snapshot`; neither fills a snapshot field itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from starserve.policy.types import InstanceSnapshot, RequestLoad


@dataclass(frozen=True, slots=True)
class WaitingRequest:
    """A request waiting here for KV blocks."""

    load: RequestLoad
    num_blocks_needed: int  # blocks it takes once admitted (in the instance's accounting)
    was_preempted: bool


def build_snapshot(
    instance_id: int,
    block_size: int,
    num_total_blocks: int,
    num_free_blocks: int,
    decoding: tuple[RequestLoad, ...],
    waiting: Sequence[WaitingRequest] = (),
    in_transfer: Iterable[RequestLoad] = (),
    is_migrating: bool = False,
) -> InstanceSnapshot:
    """The snapshot of one decode instance from its requests' facts (see the module doc).

    `decoding`: the requests in the batch; `waiting`: those waiting for blocks, in queue
    order; `in_transfer`: those whose KV arrives (P->D hand-off or migration import)."""
    incoming = tuple(in_transfer)
    num_preempted = num_waiting_blocks = 0
    if waiting:  # rare on a busy instance: the simulator takes snapshots by the million
        incoming = tuple(w.load for w in waiting) + incoming
        num_preempted = sum(1 for w in waiting if w.was_preempted)
        num_waiting_blocks = sum(w.num_blocks_needed for w in waiting)
    return InstanceSnapshot(
        instance_id=instance_id,
        block_size=block_size,
        num_total_blocks=num_total_blocks,
        num_free_blocks=num_free_blocks,
        num_waiting=len(waiting),
        num_preempted=num_preempted,
        requests=decoding,
        is_migrating=is_migrating,
        num_waiting_blocks=num_waiting_blocks,
        incoming=incoming,
    )


def aggregate_snapshot(
    instance_id: int,
    block_size: int,
    num_total_blocks: int,
    num_free_blocks: int,
    num_waiting: int,
    num_preempted: int,
    num_waiting_blocks: int,
) -> InstanceSnapshot:
    """Aggregates only, for policies whose spec says they read no per-request loads
    (`PolicySpec.reads`): the same counts as `build_snapshot`, empty request tuples."""
    return InstanceSnapshot(
        instance_id=instance_id,
        block_size=block_size,
        num_total_blocks=num_total_blocks,
        num_free_blocks=num_free_blocks,
        num_waiting=num_waiting,
        num_preempted=num_preempted,
        requests=(),
        num_waiting_blocks=num_waiting_blocks,
    )
