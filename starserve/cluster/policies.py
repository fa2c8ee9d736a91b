"""Look up the shared policy functions (`starserve.policy`) the controller calls.

The controller never decides anything itself: dispatch and rebalancing are the very
functions the simulator runs, over the same frozen snapshots. This module only adapts
their registries to two callables.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starserve.errors import StarserveError
from starserve.policy.types import InstanceSnapshot, MigrationDecision, NewRequest

DispatchFn = Callable[[Sequence[InstanceSnapshot], NewRequest], int]
PlanFn = Callable[[Sequence[InstanceSnapshot]], list[MigrationDecision]]


@dataclass(frozen=True, slots=True)
class BoundPolicy:
    name: str
    dispatch: DispatchFn  # -> decode instance id
    plan_migrations: PlanFn


def _registry() -> dict[str, object]:
    from starserve import policy

    registry: dict[str, object] | None = getattr(policy, "POLICIES", None)
    if registry is None:
        raise StarserveError("starserve.policy provides no policy registry")
    return registry


def policy_names() -> list[str]:
    return sorted(_registry())


def bind_policy(name: str, seed: int = 0) -> BoundPolicy:
    """The named policy with its random generator bound (StarserveError if unknown)."""
    registry = _registry()
    if name not in registry:
        raise StarserveError(f"unknown policy {name!r}; choose from {', '.join(sorted(registry))}")
    spec: Any = registry[name]
    rng = random.Random(seed)

    def dispatch(snapshots: Sequence[InstanceSnapshot], request: NewRequest) -> int:
        return int(spec.dispatch(snapshots, request, rng))

    def plan(snapshots: Sequence[InstanceSnapshot]) -> list[MigrationDecision]:
        return list(spec.rebalance(snapshots, rng))

    return BoundPolicy(name=name, dispatch=dispatch, plan_migrations=plan)
