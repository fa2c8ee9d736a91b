"""Decode-scheduling policies: pure functions over frozen snapshots, shared by the simulator
and the Ray controller. Look one up with `get_policy(name)` (or `POLICIES[name]`) and run it
through `spec.bind()`, a `PolicyRunner` with `dispatch(snapshots, request) -> instance id` and
`plan_migrations(snapshots) -> list[MigrationDecision]`.
"""

from starserve.policy.registry import (
    POLICIES,
    PolicyRunner,
    PolicySpec,
    PredictorKind,
    SnapshotReads,
    get_policy,
    parse_policy_list,
)
from starserve.policy.types import InstanceSnapshot, MigrationDecision, NewRequest, RequestLoad

__all__ = [
    "POLICIES",
    "InstanceSnapshot",
    "MigrationDecision",
    "NewRequest",
    "PolicyRunner",
    "PolicySpec",
    "PredictorKind",
    "RequestLoad",
    "SnapshotReads",
    "get_policy",
    "parse_policy_list",
]
