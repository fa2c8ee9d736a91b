"""Bind the shared policy functions (`starserve.policy`) for the controller.

The controller never decides anything itself: dispatch and rebalancing are the very
functions the simulator runs, over the same frozen snapshots, looked up by name in
`starserve.policy.registry`. This module only binds a named policy's parameters and its
dispatch counter (the one piece of state a policy keeps, owned by the caller).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starserve.errors import StarserveError
from starserve.policy.types import InstanceSnapshot, MigrationDecision, NewRequest

DispatchFn = Callable[[Sequence[InstanceSnapshot], NewRequest], int]
PlanFn = Callable[[Sequence[InstanceSnapshot]], list[MigrationDecision]]
SIMULATOR_ONLY = ("oracle",)  # predictor kinds a live cluster cannot provide


@dataclass(frozen=True, slots=True)
class BoundPolicy:
    name: str
    dispatch: DispatchFn  # -> decode instance id
    plan_migrations: PlanFn
    uses_predictor: bool = False


def policy_names() -> list[str]:
    """Policies a live cluster can run (the simulator's oracle needs exact lengths)."""
    from starserve.policy.registry import POLICIES

    return [name for name, spec in POLICIES.items() if spec.predictor not in SIMULATOR_ONLY]


def bind_policy(name: str) -> BoundPolicy:
    """The named policy, ready to call (StarserveError if unknown or simulator-only)."""
    from starserve.policy.registry import get_policy

    spec = get_policy(name)
    if spec.predictor in SIMULATOR_ONLY:
        raise StarserveError(
            f"policy {name!r} needs exact remaining lengths: simulator only "
            f"(choose from {', '.join(policy_names())})"
        )
    counter = 0

    def dispatch(snapshots: Sequence[InstanceSnapshot], request: NewRequest) -> int:
        nonlocal counter
        instance_id, counter = spec.dispatch_fn(snapshots, request, counter, spec.params)
        return instance_id

    def plan(snapshots: Sequence[InstanceSnapshot]) -> list[MigrationDecision]:
        return list(spec.rebalance_fn(snapshots, spec.params))

    return BoundPolicy(name, dispatch, plan, uses_predictor=spec.predictor == "model")
