"""The simulator and the live cluster share one mechanism: the same state gives the same
snapshot, the same migration the same stages, and a request keeps its prediction wherever it
goes. Real engines, in-process workers (no Ray), on one set of loaded weights.

Block counts are the one documented difference: the simulated instance counts a running
batch's KV as ceil(tokens / block size) + one block per sequence (an upper bound of the
engine's per-sequence block tables, see sim/decode.py), and a waiting request as needing one
block more than the engine's ceil. The tests assert exactly those bounds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from starserve.cluster.handles import LocalInstance
from starserve.cluster.migration import Migration as LiveMigration
from starserve.cluster.types import Handoff, KvTransfer, WorkerConfig
from starserve.cluster.worker import InstanceWorker
from starserve.mechanism.migration import MigrationConfig, MigrationStatus, StageAction
from starserve.policy.types import InstanceSnapshot, RequestLoad
from starserve.sim.build import latency_model
from starserve.sim.decode import DecodeInstance
from starserve.sim.migration import Migration as SimMigration
from starserve.sim.migration import MigrationLink
from starserve.sim.predictor import OracleSampler
from starserve.sim.request import SimRequest
from starserve.sim.snapshots import SimPredictor, snapshot

MAX_TOKENS = 200
HEADROOM_TOKENS = 16  # one block: the live reservation then equals the simulator's


@dataclass(slots=True)
class Engines:
    weights: Any
    prompts: list[list[int]]
    params: Any
    block_size: int

    def engine(self, num_blocks: int) -> Any:
        from starserve.engine import Engine, EngineConfig

        return Engine(EngineConfig(num_kv_blocks=num_blocks, num_threads=1), weights=self.weights)

    def worker(self, instance_id: int, num_blocks: int = 64) -> InstanceWorker:
        return InstanceWorker(WorkerConfig(instance_id), engine=self.engine(num_blocks))


@pytest.fixture(scope="module")
def engines() -> Engines:
    from starserve.engine import Engine, EngineConfig, SamplingParams

    first = Engine(EngineConfig(num_kv_blocks=16, num_threads=1))
    topics = ["rivers", "the moon", "bread", "a lighthouse"]
    prompts = [
        list(first.apply_chat_template([{"role": "user", "content": f"A poem about {t}."}]))
        for t in topics
    ]
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    return Engines(first.weights, prompts, params, first.block_size)


def prefill_all(engines: Engines, request_ids: list[str]) -> dict[str, KvTransfer]:
    """Prefill on a live prefill worker (its thread steps), as the cluster hands off."""
    prefill = engines.worker(99)
    prefill.start()
    try:
        out = {}
        for request_id, prompt in zip(request_ids, engines.prompts, strict=False):
            _, transfer = prefill.prefill(request_id, prompt, engines.params)
            assert transfer is not None
            out[request_id] = transfer
        return out
    finally:
        prefill.stop()


def sim_instance(instance_id: int, num_blocks: int, block_size: int) -> DecodeInstance:
    latency = latency_model("llama3-8b", "h100", 1)
    return DecodeInstance(instance_id, latency, num_blocks, block_size, 64, 0)


def sim_request(load: RequestLoad, num_prompt_tokens: int) -> SimRequest:
    request = SimRequest(load.request_id, 0.0, num_prompt_tokens, MAX_TOKENS)
    request.num_generated = load.num_generated_tokens
    return request


def by_id(loads: tuple[RequestLoad, ...]) -> dict[str, RequestLoad]:
    return {load.request_id: load for load in loads}


def assert_same_snapshot(sim: InstanceSnapshot, live: InstanceSnapshot) -> None:
    assert (sim.instance_id, sim.block_size, sim.num_total_blocks, sim.is_migrating) == (
        live.instance_id,
        live.block_size,
        live.num_total_blocks,
        live.is_migrating,
    )
    assert by_id(sim.requests) == by_id(live.requests)
    assert by_id(sim.incoming) == by_id(live.incoming)
    assert (sim.num_waiting, sim.num_preempted) == (live.num_waiting, live.num_preempted)
    # the simulator's documented block accounting (module doc)
    extra_used = sim.num_used_blocks - live.num_used_blocks
    assert 0 <= extra_used <= len(live.requests), (sim, live)
    assert sim.num_waiting_blocks - live.num_waiting_blocks == live.num_waiting


def test_same_state_gives_the_same_snapshots(engines: Engines) -> None:
    """Three decode instances: A with two running requests and one preempted (waiting for
    blocks), B the source and C the destination of a migration past its first stage."""
    transfers = prefill_all(engines, ["r1", "r2", "r3", "r4"])
    prompt_len = {rid: t.kv.num_prompt_tokens for rid, t in transfers.items()}
    bs = engines.block_size
    # A: room for the three at import, not for their growth: the newest gets preempted
    first_blocks = sum(-(-len(transfers[r].kv.token_ids) // bs) for r in ("r1", "r2", "r4"))
    a, b, c = engines.worker(0, first_blocks + 1), engines.worker(1), engines.worker(2)
    for rid in ("r1", "r2", "r4"):
        a.import_request(transfers[rid])
    for _ in range(3 * bs):
        a.step_once()
        if a.engine.stats().num_preempted:
            break
    b.import_request(transfers["r3"])
    for _ in range(5):
        b.step_once()
    info, stage = b.export_stage("r3", None)
    assert info is not None and stage is not None
    assert c.reserve("r3", info.num_tokens + HEADROOM_TOKENS)
    c.write_stage(stage)
    live = {w.instance_id: w.snapshot() for w in (a, b, c)}
    assert live[0].num_preempted == 1 and live[0].requests, "no preemption on A"
    assert by_id(live[2].incoming).keys() == {"r3"}

    # the same state, built in the simulator
    sims = {i: sim_instance(i, live[i].num_total_blocks, bs) for i in live}
    for i, snap in live.items():
        for load in snap.requests:
            sims[i].join(sim_request(load, prompt_len[load.request_id]))
        for load in snap.incoming if i != 2 else ():
            waiting = sim_request(load, prompt_len[load.request_id])
            waiting.needs_recompute = True
            sims[i].waiting.append(waiting)
    link = MigrationLink(50e9, 0.0, 1, MigrationConfig(reserve_headroom_tokens=HEADROOM_TOKENS))
    moving = sims[1].running["r3"]
    assert SimMigration(moving, sims[1], sims[2], link).start() is not None
    predictor = SimPredictor("none", OracleSampler(), np.random.default_rng(0))
    for i in live:
        assert_same_snapshot(snapshot(sims[i], sims[i].clock_s, predictor, False), live[i])


def live_stages(engines: Engines, config: MigrationConfig) -> tuple[list[StageAction], Any]:
    src, dst = engines.worker(0), engines.worker(1)
    src.import_request(prefill_all(engines, ["m"])["m"])
    for _ in range(7):  # no tokens are generated while the stages run (nothing steps)
        src.step_once()
    migration = LiveMigration("m", 0, 1, LocalInstance(src), LocalInstance(dst), config)
    record = asyncio.run(migration.run())
    assert record.status is MigrationStatus.FINISHED, record.reason
    num_tokens = next(row[1] for row in dst.engine.stats().requests if row[0] == "m")
    return migration.actions, num_tokens


def sim_stages(config: MigrationConfig, num_tokens: int, num_prompt: int) -> list[StageAction]:
    src, dst = sim_instance(0, 64, 16), sim_instance(1, 64, 16)
    request = SimRequest("m", 0.0, num_prompt, MAX_TOKENS)
    request.num_generated = num_tokens - num_prompt
    src.join(request)
    migration = SimMigration(request, src, dst, MigrationLink(50e9, 0.0, 1, config))
    assert migration.start() is not None
    while not migration.is_final_stage:  # the source makes no step in between either
        assert migration.on_stage_end() is not None
    migration.finish()
    assert migration.status is MigrationStatus.FINISHED
    return migration.actions


@pytest.mark.parametrize(
    ("max_stages", "final_stage_max_blocks"), [(1, 16), (2, 0), (3, 16), (4, 1), (4, 0)]
)
def test_same_migration_goes_through_the_same_stages(
    engines: Engines, max_stages: int, final_stage_max_blocks: int
) -> None:
    config = MigrationConfig(max_stages, final_stage_max_blocks, HEADROOM_TOKENS)
    live, num_tokens = live_stages(engines, config)
    # incomplete last blocks (of the KV and of the context): every later stage carries one
    assert num_tokens % engines.block_size not in (0, 1)
    num_prompt = len(engines.prompts[0])
    assert sim_stages(config, num_tokens, num_prompt) == live
    assert len(live) <= max_stages and live[-1] is StageAction.FINAL


def test_prediction_travels_through_hand_off_and_migration(engines: Engines) -> None:
    """The prefill instance predicts at the first token; decode instances without a
    predictor of their own still know it, aged, after the hand-off and after a migration."""
    config = WorkerConfig(9, engine_overrides={"num_kv_blocks": 32})
    prefill = InstanceWorker(config, engines.weights)
    assert prefill.predictions.predictor is not None, "the shipped predictor did not load"
    prefill.start()
    try:
        handoff, transfer = prefill.prefill("p", engines.prompts[1], engines.params)
    finally:
        prefill.stop()
    assert isinstance(handoff, Handoff) and transfer is not None
    prediction = handoff.prediction
    assert prediction is not None and prediction.at_generated_tokens == 1
    assert transfer.prediction == prediction

    a, b = engines.worker(0), engines.worker(1)  # no predictor: only what travels
    assert a.predictions.predictor is None
    a.import_request(transfer)
    for _ in range(5):
        a.step_once()

    def predicted(worker: InstanceWorker, loads: str = "requests") -> RequestLoad:
        snap = worker.snapshot()
        return next(r for r in getattr(snap, loads) if r.request_id == "p")

    on_a = predicted(a)
    assert on_a.num_generated_tokens == 6
    assert on_a.predicted_remaining_tokens == prediction.aged(6, MAX_TOKENS - 6)

    info, stage = a.export_stage("p", None)
    assert info is not None and stage is not None and stage.prediction == prediction
    assert b.reserve("p", info.num_tokens + HEADROOM_TOKENS)
    b.write_stage(stage)
    assert predicted(b, "incoming").predicted_remaining_tokens == prediction.aged(6)
    b.abort_import("p")

    config = MigrationConfig(reserve_headroom_tokens=HEADROOM_TOKENS)
    record = asyncio.run(LiveMigration("p", 0, 1, LocalInstance(a), LocalInstance(b), config).run())
    assert record.status is MigrationStatus.FINISHED, record.reason
    for _ in range(3):
        b.step_once()
    on_b = predicted(b)
    assert on_b.num_generated_tokens == 9
    assert on_b.predicted_remaining_tokens == prediction.aged(9, MAX_TOKENS - 9)
    assert a.predictions.get("p") is None  # the source forgot it on release
