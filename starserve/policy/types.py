"""Frozen snapshots that policies read, and the decisions they return.

These cross every boundary in starserve: the simulator builds them from simulated instances,
the Ray controller from real engines' stats. Policies see nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RequestLoad:
    """One running request on a decode instance, as the controller sees it."""

    request_id: str
    num_context_tokens: int  # tokens whose KV the instance holds (prompt + generated so far)
    num_generated_tokens: int
    predicted_remaining_tokens: float | None = None  # None: no prediction yet


@dataclass(frozen=True, slots=True)
class InstanceSnapshot:
    """A decode instance's load at one polling instant."""

    instance_id: int
    block_size: int
    num_total_blocks: int
    num_free_blocks: int
    num_waiting: int
    num_preempted: int  # waiting requests that were preempted (Llumnix treats them as overload)
    requests: tuple[RequestLoad, ...]  # decoding requests (contract: starserve.mechanism.snapshot)
    is_migrating: bool = False  # a migration in flight with this instance as source or dest
    num_waiting_blocks: int = 0  # KV blocks the waiting (incl. preempted) requests will need
    # requests dispatched here that do not decode yet (waiting for blocks, preempted, or KV in
    # transfer), when the controller knows them; predictive policies count their growth
    incoming: tuple[RequestLoad, ...] = ()

    @property
    def num_used_blocks(self) -> int:
        return self.num_total_blocks - self.num_free_blocks

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_total_blocks * self.block_size


@dataclass(frozen=True, slots=True)
class NewRequest:
    """A request waiting to be dispatched to a decode instance."""

    request_id: str
    num_prompt_tokens: int
    predicted_output_tokens: float | None = None


@dataclass(frozen=True, slots=True)
class MigrationDecision:
    """Move one running request from `src_instance_id` to `dst_instance_id`."""

    request_id: str
    src_instance_id: int
    dst_instance_id: int
