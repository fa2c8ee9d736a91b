"""The controller's mechanics in one process: dispatch through the bound policy, rebalancing
migrations launched from its polling loop, aborts. Instances run the KV-dependent fake engine
in their own stepping threads; the policy here is a test double that herds every request
onto one instance and asks to move one whenever the other holds two fewer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from starserve.cluster.controller import Controller
from starserve.cluster.handles import LocalInstance
from starserve.cluster.policies import FunctionPolicy
from starserve.cluster.types import OutputChunk, WorkerConfig
from starserve.cluster.worker import InstanceWorker
from starserve.policy.types import InstanceSnapshot, MigrationDecision, NewRequest
from tests.cluster.fake_engine import FakeEngine, FakeParams


def herd(snapshots: Sequence[InstanceSnapshot], request: NewRequest) -> int:
    return snapshots[0].instance_id


def spread(snapshots: Sequence[InstanceSnapshot]) -> list[MigrationDecision]:
    idle = sorted((s for s in snapshots if not s.is_migrating), key=lambda s: -len(s.requests))
    if len(idle) < 2 or len(idle[0].requests) - len(idle[-1].requests) < 2:
        return []
    newest = min(idle[0].requests, key=lambda r: r.num_generated_tokens)
    return [MigrationDecision(newest.request_id, idle[0].instance_id, idle[-1].instance_id)]


def workers() -> list[InstanceWorker]:
    made = [InstanceWorker(WorkerConfig(i), engine=FakeEngine(num_blocks=256)) for i in range(3)]
    for worker in made:
        worker.start()
    return made


def collect(
    made: list[InstanceWorker], request_ids: set[str], timeout_s: float = 30
) -> dict[str, list[int]]:
    tokens: dict[str, dict[int, int]] = {rid: {} for rid in request_ids}
    finished: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while finished != request_ids:
        assert time.monotonic() < deadline, f"unfinished: {request_ids - finished}"
        chunks: list[OutputChunk] = [c for w in made for c in w.wait_outputs(0.01)]
        for chunk in chunks:
            for offset, token in enumerate(chunk.token_ids):
                tokens[chunk.request_id][chunk.first_token_index + offset] = token
            if chunk.finished:
                finished.add(chunk.request_id)
    return {rid: [t[i] for i in range(len(t))] for rid, t in tokens.items()}


def herding_controller(made: list[InstanceWorker]) -> Controller:
    """One prefill and two decode workers under the herd-then-spread test policy."""
    return Controller(
        prefill=[LocalInstance(made[0])],
        decode=[LocalInstance(made[1]), LocalInstance(made[2])],
        policy=FunctionPolicy("herd_then_spread", herd, spread),
        poll_interval_s=0.01,
    )


def test_rebalancing_migrations_keep_every_output_exact() -> None:
    prompts = {f"r{i}": [3 + i, 7, 11 * i % 50, 5] * (1 + i % 3) for i in range(8)}
    made = workers()
    controller = herding_controller(made)

    async def run() -> None:
        await controller.start()
        await asyncio.gather(
            *(controller.submit(rid, p, FakeParams(60)) for rid, p in prompts.items())
        )
        await asyncio.sleep(0.3)
        await controller.stop()

    try:
        asyncio.run(run())
        outputs = collect(made, set(prompts))
    finally:
        for worker in made:
            worker.stop()
    metrics = controller.metrics()
    assert metrics.num_migrations_by_status["finished"] >= 2, metrics.num_migrations_by_status
    for rid, prompt in prompts.items():
        alone = InstanceWorker(WorkerConfig(9), engine=FakeEngine(num_blocks=256))
        alone.add_request(rid, prompt, FakeParams(60))
        while alone.engine.has_unfinished_requests():
            alone.step_once()
        assert outputs[rid] == [t for c in alone.wait_outputs(0) for t in c.token_ids], rid
    for worker in made:
        stats = worker.engine.stats()
        assert stats.num_free_blocks == stats.num_total_blocks


def test_abort_frees_the_request_wherever_it_is() -> None:
    made = workers()
    controller = herding_controller(made)

    async def run() -> None:
        await controller.start()
        await controller.submit("long", [5, 6, 7], FakeParams(10_000))
        await asyncio.sleep(0.1)
        await controller.abort("long")
        await controller.submit("late", [5, 6, 7], FakeParams(5))
        await controller.stop()

    try:
        asyncio.run(run())
        time.sleep(0.1)
        for worker in made:
            stats = worker.engine.stats()
            assert stats.requests == () and stats.num_free_blocks == stats.num_total_blocks
    finally:
        for worker in made:
            worker.stop()


def test_dispatch_sees_every_request_dispatched_before() -> None:
    """Hand-offs in transfer are incoming on their instance (the controller's part of the
    snapshot contract) until the worker reports them, so a burst never vanishes from view
    between polls. The decode workers never step, so nothing finishes meanwhile."""
    made = [InstanceWorker(WorkerConfig(i), engine=FakeEngine(num_blocks=256)) for i in range(3)]
    made[0].start()  # only the prefill worker steps
    dispatched: list[str] = []
    unseen: list[set[str]] = []

    def recording_herd(snapshots: Sequence[InstanceSnapshot], request: NewRequest) -> int:
        visible = {r.request_id for s in snapshots for r in (*s.requests, *s.incoming)}
        unseen.append(set(dispatched) - visible)
        dispatched.append(request.request_id)
        return snapshots[0].instance_id

    controller = Controller(
        prefill=[LocalInstance(made[0])],
        decode=[LocalInstance(made[1]), LocalInstance(made[2])],
        policy=FunctionPolicy("recording_herd", recording_herd, lambda s: []),
        poll_interval_s=0.002,  # polls land while hand-offs are in transfer
    )

    async def run() -> None:
        await controller.start()
        prompts = {f"b{i}": [4 + i, 9, 13, 6] * 3 for i in range(6)}
        await asyncio.gather(*(controller.submit(r, p, FakeParams(60)) for r, p in prompts.items()))
        await controller.stop()

    try:
        asyncio.run(run())
    finally:
        for worker in made:
            worker.stop()
    assert len(dispatched) == 6
    assert unseen == [set()] * 6
    final = controller.decode_snapshots()[0]
    assert {r.request_id for r in final.requests} == set(dispatched)
    assert final.incoming == ()
