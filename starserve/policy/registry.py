"""The policy registry: each policy name maps to its (dispatch, rebalance, predictor) triple.

The simulator and the Ray controller both look policies up here and run them through a
`PolicyRunner`, the only place that keeps state between calls (round robin's cursor).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from starserve.errors import StarserveError
from starserve.policy.dispatch import DISPATCH_POLICIES, DispatchFn
from starserve.policy.items import ItemsCache
from starserve.policy.load import under_pressure
from starserve.policy.rebalance import (
    LLUMNIX_V1_RESCHEDULE_INTERVAL_S,
    REBALANCE_POLICIES,
    RebalanceFn,
)
from starserve.policy.types import InstanceSnapshot, MigrationDecision, NewRequest

# What fills RequestLoad.predicted_remaining_tokens: nothing, the predictor, or the truth.
PredictorKind = Literal["none", "model", "oracle"]

# What a policy's dispatch reads of a snapshot: nothing (load-blind), the aggregates (block and
# queue counts), or the per-request loads too. Drivers may skip building what is not read; its
# rebalancing, when it migrates, always reads requests.
SnapshotReads = Literal["nothing", "aggregates", "requests"]

# Llumnix polls instance loads every 50 ms (llumnix `--polling-interval` default 0.05 s).
DEFAULT_POLL_INTERVAL_S = 0.05


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A complete decode-scheduling policy."""

    name: str
    dispatch_name: str
    rebalance_name: str
    predictor: PredictorKind
    description: str
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S  # how stale the loads dispatch reads are
    reads: SnapshotReads = "requests"  # what dispatch reads (the safe default: everything)
    # how often `rebalance` runs (None: every poll); Llumnix v1 reschedules every 500 ms
    # while its cluster view refreshes every 50 ms
    rebalance_interval_s: float | None = None
    # a predicate on the snapshots' aggregates only (never `requests`/`incoming`): while it
    # is False, dispatch reads aggregates only and the plan is empty, so a caller may pass
    # snapshots without per-request loads (STAR: `load.under_pressure`)
    pressure_gate: Callable[[Sequence[InstanceSnapshot]], bool] | None = None

    @property
    def dispatch(self) -> DispatchFn:
        return DISPATCH_POLICIES[self.dispatch_name]

    @property
    def rebalance(self) -> RebalanceFn:
        return REBALANCE_POLICIES[self.rebalance_name]

    @property
    def migrates(self) -> bool:
        return self.rebalance_name != "none"

    def bind(self) -> PolicyRunner:
        """A fresh runner with its own cursor (one per controller or simulation)."""
        return PolicyRunner(self)


@dataclass(slots=True)
class PolicyRunner:
    """Calls one policy's pure functions, carrying round robin's cursor between calls, and
    the per-instance arrays STAR derives from snapshots (rebuilt only for an instance whose
    snapshot changed, so dispatch and the plan of one round share them)."""

    spec: PolicySpec
    cursor: int = 0
    items_cache: ItemsCache = field(default_factory=ItemsCache)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def rebalance_interval_s(self) -> float | None:
        """How often the owner should call `plan_migrations` (None: every poll)."""
        return self.spec.rebalance_interval_s

    def dispatch(self, snapshots: Sequence[InstanceSnapshot], request: NewRequest) -> int:
        """The decode instance id for `request`."""
        instance_id, self.cursor = self.spec.dispatch(
            snapshots, request, self.cursor, self.items_cache
        )
        return instance_id

    def plan_migrations(self, snapshots: Sequence[InstanceSnapshot]) -> list[MigrationDecision]:
        """This round's migrations (empty for policies that never migrate)."""
        return self.spec.rebalance(snapshots, self.items_cache)


def _spec(
    name: str,
    dispatch: str,
    rebalance: str,
    predictor: PredictorKind,
    text: str,
    reads: SnapshotReads = "requests",
    rebalance_interval_s: float | None = None,
) -> PolicySpec:
    # both wait for pressure
    gated = dispatch == "star" and rebalance in ("star", "star_anticipatory", "none")
    return PolicySpec(
        name,
        dispatch,
        rebalance,
        predictor,
        text,
        reads=reads,
        rebalance_interval_s=rebalance_interval_s,
        pressure_gate=under_pressure if gated else None,
    )


POLICIES: dict[str, PolicySpec] = {
    spec.name: spec
    for spec in (
        _spec(
            "round_robin",
            "round_robin",
            "none",
            "none",
            "static PD: round-robin dispatch, no migration (vLLM's proxy)",
            reads="nothing",
        ),
        _spec(
            "least_current_load",
            "least_current_load",
            "none",
            "none",
            "dispatch to the fewest KV tokens in use, no migration (llm-d, SGLang, Dynamo)",
            reads="aggregates",
        ),
        _spec(
            "least_predicted_load",
            "least_predicted_load",
            "none",
            "model",
            "dispatch to the least predicted future KV load, no migration",
        ),
        _spec(
            "llumnix",
            "llumnix",
            "llumnix",
            "none",
            "Llumnix: most-free dispatch, freeness-threshold defrag migration",
        ),
        _spec(
            "llumnix_v1",
            "llumnix_v1",
            "llumnix_v1",
            "none",
            "Llumnix v1 (Go): least projected KV usage dispatch, decode_load rescheduling",
            rebalance_interval_s=LLUMNIX_V1_RESCHEDULE_INTERVAL_S,
        ),
        _spec(
            "power_of_two",
            "power_of_two",
            "none",
            "none",
            "two random instances, the shorter queue wins, no migration (Ray Serve LLM)",
        ),
        _spec(
            "star",
            "star",
            "star",
            "model",
            "STAR: current load until KV runs short, then predicted peaks; pressure-gated, "
            "cost-aware migration with P90 relief",
        ),
        _spec("oracle", "star", "star", "oracle", "STAR fed exact remaining lengths (upper bound)"),
        _spec(
            "star_anticipatory",
            "star",
            "star_anticipatory",
            "model",
            "variant: STAR relieving on P90 overflow ahead of preemption, plus the balance pass",
        ),
        _spec(
            "star_v1",
            "star_v1",
            "star_v1",
            "model",
            "STAR's first design: predictive score always, relief + balance every round",
        ),
        _spec(
            "star_no_migration",
            "star",
            "none",
            "model",
            "ablation: STAR dispatch only, no migration (TetriInfer-like)",
        ),
        _spec(
            "star_current_only",
            "star_current_only",
            "star_current_only",
            "model",
            "ablation: STAR on current load only (w = 0)",
        ),
        _spec(
            "star_predicted_only",
            "least_predicted_load",
            "star_predicted_only",
            "model",
            "ablation: STAR on predicted load only (w = 1)",
        ),
    )
}


def get_policy(name: str) -> PolicySpec:
    """The named policy; an unknown name is a one-line `StarserveError`."""
    if name not in POLICIES:
        raise StarserveError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    return POLICIES[name]


def parse_policy_list(text: str) -> list[str]:
    """`a,b,c` -> validated names, in order, without duplicates."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise StarserveError("--policies: give at least one policy name")
    for name in names:
        get_policy(name)
    return list(dict.fromkeys(names))
