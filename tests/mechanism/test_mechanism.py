"""The shared mechanism contracts: the stage rule, prefill placement, the snapshot builder and
the one cluster settings concept."""

from __future__ import annotations

import pytest

from starserve.config import validate
from starserve.errors import StarserveError
from starserve.mechanism.config import ClusterConfig
from starserve.mechanism.migration import (
    MigrationConfig,
    MigrationStatus,
    StageAction,
    abort_status,
    next_stage,
    num_stage_blocks,
)
from starserve.mechanism.placement import PrefillPlacer, least_queued_tokens
from starserve.mechanism.snapshot import WaitingRequest, build_snapshot
from starserve.policy.types import RequestLoad


def stage_sequence(config: MigrationConfig, stage_blocks: list[int]) -> list[StageAction]:
    """The actions `next_stage` takes when copy stage k carries `stage_blocks[k]` blocks."""
    actions: list[StageAction] = []
    last = 0
    while True:
        action = next_stage(len(actions), last, config)
        actions.append(action)
        if action is not StageAction.COPY:
            return actions
        last = stage_blocks[len(actions) - 1]


def test_max_stages_counts_the_final_stage() -> None:
    big = [100] * 10
    for max_stages in range(1, 6):
        actions = stage_sequence(MigrationConfig(max_stages=max_stages), big)
        assert len(actions) == max_stages
        assert actions[-1] is StageAction.FINAL
        assert all(a is StageAction.COPY for a in actions[:-1])


def test_small_stage_goes_final_and_first_stage_always_copies() -> None:
    config = MigrationConfig(max_stages=5, final_stage_max_blocks=4)
    assert stage_sequence(config, [3]) == [StageAction.COPY, StageAction.FINAL]
    assert stage_sequence(config, [40, 9, 4]) == [StageAction.COPY] * 3 + [StageAction.FINAL]
    assert next_stage(0, 0, MigrationConfig(max_stages=1)) is StageAction.FINAL


def test_abort_wins_and_blames_the_right_side() -> None:
    config = MigrationConfig()
    assert next_stage(1, 0, config, source_running=False) is StageAction.ABORT
    assert next_stage(0, 0, config, destination_has_room=False) is StageAction.ABORT
    assert abort_status(source_running=False) is MigrationStatus.ABORTED_SRC
    assert abort_status(source_running=True) is MigrationStatus.ABORTED_DST


def test_stage_blocks_match_the_engine_export() -> None:
    assert num_stage_blocks(33, 0, 16) == 3  # first stage: every block
    assert num_stage_blocks(35, 33, 16) == 1  # the incomplete block again
    assert num_stage_blocks(49, 33, 16) == 2
    assert num_stage_blocks(48, 48, 16) == 0


def test_placements() -> None:
    assert least_queued_tokens([30, 10, 10], 0) == (1, 0)
    placer = PrefillPlacer.named("round_robin")
    assert [placer.choose([0, 0, 0]) for _ in range(4)] == [0, 1, 2, 0]
    with pytest.raises(StarserveError):
        PrefillPlacer.named("random")


def test_build_snapshot_follows_the_contract() -> None:
    run = RequestLoad("a", 40, 8, 12.0)
    wait = WaitingRequest(RequestLoad("b", 20, 1, None), 2, was_preempted=False)
    pre = WaitingRequest(RequestLoad("c", 50, 5, 3.0), 4, was_preempted=True)
    moving = RequestLoad("d", 64, 10, 7.0)
    snap = build_snapshot(3, 16, 100, 60, (run,), [wait, pre], [moving], is_migrating=True)
    assert snap.requests == (run,)
    assert snap.incoming == (wait.load, pre.load, moving)
    assert (snap.num_waiting, snap.num_preempted, snap.num_waiting_blocks) == (2, 1, 6)
    assert (snap.num_free_blocks, snap.is_migrating) == (60, True)


def test_cluster_config_takes_the_old_names() -> None:
    old = validate(
        ClusterConfig,
        {"num_prefill": 2, "num_decode": 3, "poll_interval_ms": 20.0,
         "migration_last_stage_blocks": 4},
    )  # fmt: skip
    assert (old.num_prefill_instances, old.num_decode_instances) == (2, 3)
    assert old.poll_interval_s == pytest.approx(0.02)
    assert old.migration_config() == MigrationConfig(final_stage_max_blocks=4)
    with pytest.raises(StarserveError, match="not both"):
        validate(ClusterConfig, {"num_decode": 3, "num_decode_instances": 3})
    with pytest.raises(StarserveError, match="placement"):
        validate(ClusterConfig, {"prefill_placement": "random"})
