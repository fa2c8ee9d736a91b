"""The shared policy functions (`starserve.policy`), bound for the controller.

The controller never decides anything itself: dispatch and rebalancing are the very
functions the simulator runs, over the same frozen snapshots, looked up by name in
`starserve.policy.registry` and called through its `PolicyRunner` (which keeps round robin's
cursor). The controller depends only on the small `ControllerPolicy` protocol below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from starserve.errors import StarserveError
from starserve.policy.types import InstanceSnapshot, MigrationDecision, NewRequest

SIMULATOR_ONLY = ("oracle",)  # predictor kinds a live cluster cannot provide


class ControllerPolicy(Protocol):
    """What the controller calls (the registry's `PolicyRunner` is one)."""

    @property
    def name(self) -> str: ...

    def dispatch(self, snapshots: Sequence[InstanceSnapshot], request: NewRequest) -> int: ...

    def plan_migrations(self, snapshots: Sequence[InstanceSnapshot]) -> list[MigrationDecision]: ...


@dataclass(frozen=True, slots=True)
class FunctionPolicy:
    """A policy from two plain functions (tests drive the controller's mechanics with it)."""

    name: str
    dispatch_fn: Callable[[Sequence[InstanceSnapshot], NewRequest], int]
    plan_fn: Callable[[Sequence[InstanceSnapshot]], list[MigrationDecision]]

    def dispatch(self, snapshots: Sequence[InstanceSnapshot], request: NewRequest) -> int:
        return self.dispatch_fn(snapshots, request)

    def plan_migrations(self, snapshots: Sequence[InstanceSnapshot]) -> list[MigrationDecision]:
        return self.plan_fn(snapshots)


def policy_names() -> list[str]:
    """Policies a live cluster can run (the simulator's oracle needs exact lengths)."""
    from starserve.policy.registry import POLICIES

    return [name for name, spec in POLICIES.items() if spec.predictor not in SIMULATOR_ONLY]


def bind_policy(name: str) -> ControllerPolicy:
    """A fresh runner of the named registry policy (StarserveError if unknown or
    simulator-only)."""
    from starserve.policy.registry import get_policy

    spec = get_policy(name)
    if spec.predictor in SIMULATOR_ONLY:
        raise StarserveError(
            f"policy {name!r} needs exact remaining lengths: simulator only "
            f"(choose from {', '.join(policy_names())})"
        )
    return spec.bind()
