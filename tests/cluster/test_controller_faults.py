"""The controller's abort and failure paths in one process (fake engine, real workers and
stepping threads): an abort that lands during any migration stage, or while a request waits
for room, leaves nothing behind; with no decode instance up a request fails at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from starserve.cluster.controller import Controller
from starserve.cluster.handles import LocalInstance
from starserve.cluster.policies import FunctionPolicy
from starserve.cluster.types import (
    InstanceDiedError,
    MigrationStatus,
    NoInstanceError,
    WorkerConfig,
)
from starserve.cluster.worker import InstanceWorker
from tests.cluster.fake_engine import FakeEngine, FakeParams
from tests.cluster.test_controller import herd


class GatedInstance(LocalInstance):
    """Holds one named call at a gate until the test opens it."""

    def __init__(self, worker: InstanceWorker, gated: str):
        super().__init__(worker)
        self.gated, self.entered, self.gate = gated, asyncio.Event(), asyncio.Event()

    async def _call(self, name: str, *args: Any) -> Any:
        if name == self.gated:
            self.entered.set()
            await self.gate.wait()
        return await super()._call(name, *args)


def workers(num_blocks: int = 256) -> list[InstanceWorker]:
    made = [InstanceWorker(WorkerConfig(i), engine=FakeEngine(num_blocks)) for i in range(3)]
    for worker in made:
        worker.start()
    return made


def assert_empty(made: list[InstanceWorker]) -> None:
    time.sleep(0.1)
    for worker in made:
        stats = worker.engine.stats()
        assert stats.requests == (), f"instance {worker.instance_id} still runs {stats.requests}"
        assert stats.num_free_blocks == stats.num_total_blocks, f"{worker.instance_id} leaks"


def controller_for(prefill: Any, decode: list[Any]) -> Controller:
    never = FunctionPolicy("herd", herd, lambda snapshots: [])
    return Controller(prefill=[prefill], decode=decode, policy=never, poll_interval_s=0.01)


@pytest.mark.parametrize(
    ("side", "call"),
    [("dst", "reserve"), ("dst", "write_stage"), ("dst", "grow_reservation"),
     ("src", "pause_and_export"), ("dst", "commit")],
)  # fmt: skip
def test_abort_during_a_migration_stage_leaves_nothing(side: str, call: str) -> None:
    made = workers()
    src = GatedInstance(made[1], call if side == "src" else "")
    dst = GatedInstance(made[2], call if side == "dst" else "")
    controller = controller_for(LocalInstance(made[0]), [src, dst])

    async def run() -> None:
        await controller.start()
        await controller.submit("r", [5, 6, 7], FakeParams(10_000))
        await asyncio.sleep(0.05)
        migration = asyncio.create_task(controller.migrate("r", dst.instance_id))
        await asyncio.wait_for((src if side == "src" else dst).entered.wait(), 10)
        await controller.abort("r")
        src.gate.set()
        dst.gate.set()
        record = await migration
        if record.status is MigrationStatus.FINISHED:  # committed first: dropped there after
            assert record.dst_instance_id == dst.instance_id
        await controller.stop()

    try:
        asyncio.run(run())
        assert_empty(made)
    finally:
        for worker in made:
            worker.stop()


def test_abort_while_waiting_for_room_is_never_imported() -> None:
    """The destination is full; the request retries (listed as incoming once) until the
    client gives up; when room appears later it must not be imported for nobody."""
    made = workers(num_blocks=8)
    controller = controller_for(LocalInstance(made[0]), [LocalInstance(made[1])])

    async def run() -> None:
        await controller.start()
        assert made[1].reserve("blocker", 28)  # 7 of the destination's 8 blocks
        waiting = asyncio.create_task(controller.submit("late", list(range(1, 21)), FakeParams(4)))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        incoming = [r.request_id for s in controller.decode_snapshots() for r in s.incoming]
        assert incoming.count("late") == 1
        await controller.abort("late")
        await asyncio.wait_for(waiting, 5)
        made[1].abort_import("blocker")  # room for "late" now, which must stay away
        await asyncio.sleep(0.3)
        await controller.stop()

    try:
        asyncio.run(run())
        assert_empty(made)
    finally:
        for worker in made:
            worker.stop()


def test_no_decode_instance_up_fails_at_once() -> None:
    made = workers()
    decode = [LocalInstance(made[1]), LocalInstance(made[2])]
    controller = controller_for(LocalInstance(made[0]), decode)

    async def run() -> float:
        await controller.start()
        for handle in decode:
            controller.health.fail(handle, "decode", "test", kill=False)
        started = time.monotonic()
        with pytest.raises(NoInstanceError):
            await controller.submit("r", [5, 6, 7], FakeParams(8))
        await controller.stop()
        return time.monotonic() - started

    try:
        assert asyncio.run(run()) < 1.0
        assert_empty(made)
    finally:
        for worker in made:
            worker.stop()


def reference_outputs(prompts: dict[str, list[int]], max_tokens: int) -> dict[str, list[int]]:
    """What each request generates undisturbed (the fake's tokens depend on its KV only)."""
    engine = FakeEngine(256)
    for request_id, prompt in prompts.items():
        engine.add_request(request_id, prompt, FakeParams(max_tokens))
    generated: dict[str, list[int]] = {rid: [] for rid in prompts}
    while engine.has_unfinished_requests():
        for out in engine.step():
            generated[out.request_id].extend(out.new_token_ids)
    return generated


def drain(made: list[InstanceWorker], wanted: set[str], timeout_s: float = 10.0) -> dict:
    """Token ids per request, reassembled by position from every worker's output chunks."""
    tokens: dict[str, dict[int, int]] = {rid: {} for rid in wanted}
    finished: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while finished != wanted and time.monotonic() < deadline:
        for worker in made:
            for chunk in worker.wait_outputs(0.01):
                for offset, token in enumerate(chunk.token_ids):
                    tokens[chunk.request_id][chunk.first_token_index + offset] = token
                if chunk.finished:
                    finished.add(chunk.request_id)
    assert finished == wanted, f"unfinished: {wanted - finished}"
    return {rid: [t[i] for i in sorted(t)] for rid, t in tokens.items()}


@pytest.mark.parametrize("prefill_up", [True, False])
def test_lost_requests_resume_by_token_replay_on_both_tiers(prefill_up: bool) -> None:
    """A burst of lost requests is re-prefilled, part on the prefill instance and part
    locally on the decode instance (none of it on the prefill side once that is down), and
    every request continues from exactly the token after the ones it streamed."""
    made = workers()
    controller = controller_for(LocalInstance(made[0]), [LocalInstance(made[1])])
    prompts = {f"r{i}": [3 + i, 9, 4 + 2 * i, 11] for i in range(6)}
    reference = reference_outputs(prompts, max_tokens=12)
    streamed = {rid: tokens[: 2 + i] for i, (rid, tokens) in enumerate(reference.items())}

    async def run() -> None:
        await controller.start()
        if not prefill_up:
            controller.health.fail(controller.prefill[0], "prefill", "test", kill=False)
        await asyncio.gather(
            *(
                controller.resume(rid, prompts[rid], streamed[rid], FakeParams(12))
                for rid in prompts
            )
        )
        await controller.stop()

    try:
        asyncio.run(run())
        continued = drain(made, set(prompts))
        for rid in prompts:
            assert streamed[rid] + continued[rid] == reference[rid], rid
        on_prefill, on_decode = made[0].engine.replayed, made[1].engine.replayed
        assert sorted(on_prefill + on_decode) == sorted(prompts)
        if prefill_up:
            assert on_prefill and on_decode, (on_prefill, on_decode)
        else:
            assert not on_prefill
        assert_empty(made)
    finally:
        for worker in made:
            worker.stop()


class DyingSource(LocalInstance):
    """A source that dies (as Ray reports it) when the final migration stage is asked of it."""

    async def pause_and_export(self, request_id: str, since_stage: int | None) -> Any:
        self.worker.abort(request_id)  # its KV is gone with the process
        raise InstanceDiedError(self.instance_id, "actor died")


def test_source_death_mid_migration_resumes_on_the_staged_kv() -> None:
    """The source dies after a stage reached the destination: the destination keeps that KV,
    the failover prefills only the tokens after it, and the output is unchanged. The decode
    workers are stepped by hand, so the request is mid-decode when the migration starts."""
    made = [InstanceWorker(WorkerConfig(i), engine=FakeEngine(256)) for i in range(3)]
    made[0].start()  # the prefill instance steps by itself
    src, dst = DyingSource(made[1]), LocalInstance(made[2])
    controller = controller_for(LocalInstance(made[0]), [src, dst])
    prompt = [5, 6, 7, 8, 9, 10, 11]
    reference = reference_outputs({"r": prompt}, max_tokens=40)["r"]

    async def run() -> MigrationStatus:
        await controller.start()
        await controller.submit("r", prompt, FakeParams(40))
        for _ in range(9):
            made[1].step_once()
        record = await controller.migrate("r", dst.instance_id)
        streamed = drain_partial([made[0], made[1]], "r")
        assert streamed == reference[:10]
        await controller.resume("r", prompt, streamed, FakeParams(40))
        made[2].start()
        rest = drain([made[2]], {"r"})["r"]
        assert streamed + rest == reference
        await controller.stop()
        return record.status

    try:
        assert asyncio.run(run()) is MigrationStatus.ABORTED_SRC
        kept = made[2].engine.resumed["r"]
        assert kept >= len(prompt) + 8, f"only {kept} positions kept"
        assert made[2].engine.replayed == [] and made[0].engine.replayed == []
        assert_empty(made)
    finally:
        for worker in made:
            worker.stop()


def drain_partial(made: list[InstanceWorker], request_id: str) -> list[int]:
    """The tokens of `request_id` that reached the output queues so far, in order."""
    tokens: dict[int, int] = {}
    for worker in made:
        for chunk in worker.wait_outputs(0.01):
            if chunk.request_id == request_id:
                for offset, token in enumerate(chunk.token_ids):
                    tokens[chunk.first_token_index + offset] = token
    return [tokens[i] for i in sorted(tokens)]


def test_lost_requests_resume_on_their_kept_hand_off_kv() -> None:
    """A decode instance dies mid-decode: every request it held resumes on the survivor from
    the prefill hand-off KV the controller kept, so only the tokens streamed since the
    hand-off are prefilled (no token replay anywhere), every output equals an undisturbed
    run's, and once the requests end the controller holds no hand-off KV."""
    made = [InstanceWorker(WorkerConfig(i), engine=FakeEngine(256)) for i in range(3)]
    made[0].start()  # decode instance 1 is stepped by hand, so it dies mid-decode
    controller = controller_for(
        LocalInstance(made[0]), [LocalInstance(made[1]), LocalInstance(made[2])]
    )
    prompts = {f"r{i}": [4 + i, 8, 15, 16, 23 + i, 42] for i in range(4)}
    reference = reference_outputs(prompts, max_tokens=20)

    async def run() -> None:
        await controller.start()
        for rid, prompt in prompts.items():  # herd: all on decode instance 1
            await controller.submit(rid, prompt, FakeParams(20))
        assert set(controller._handoffs) == set(prompts)
        for _ in range(5):
            made[1].step_once()
        streamed: dict[str, dict[int, int]] = {rid: {} for rid in prompts}
        for worker in made[:2]:
            for chunk in worker.wait_outputs(0.01):
                for offset, token in enumerate(chunk.token_ids):
                    streamed[chunk.request_id][chunk.first_token_index + offset] = token
        for rid in prompts:  # the process dies with its KV
            made[1].engine.abort_request(rid)
        controller.health.fail(controller.decode[0], "decode", "test", kill=False)
        lost = await controller.wait_lost(5.0)
        assert sorted(lost) == sorted(prompts)
        tokens = {rid: [t[i] for i in sorted(t)] for rid, t in streamed.items()}
        for rid in lost:
            assert tokens[rid] == reference[rid][:6], rid
            await controller.resume(rid, prompts[rid], tokens[rid], FakeParams(20))
        made[2].start()
        rest = drain([made[2]], set(prompts))
        for rid in prompts:
            assert tokens[rid] + rest[rid] == reference[rid], rid
        await asyncio.sleep(0.1)  # polls see them finished
        assert controller._handoffs == {} and controller._handoff_tokens == 0
        await controller.stop()

    try:
        asyncio.run(run())
        for rid, prompt in prompts.items():  # kept the hand-off's positions
            assert made[2].engine.resumed[rid] >= len(prompt), rid
        assert made[0].engine.replayed == [] and made[2].engine.replayed == []
        assert_empty(made)
    finally:
        for worker in made:
            worker.stop()


def test_hand_off_kv_kept_within_its_budget_oldest_dropped_first() -> None:
    never = FunctionPolicy("herd", herd, lambda snapshots: [])
    controller = Controller(prefill=[], decode=[], policy=never, failover_kv_tokens=10)
    for rid in ("a", "b", "c"):
        controller._keep_handoff(rid, object(), 4)
    assert list(controller._handoffs) == ["b", "c"] and controller._handoff_tokens == 8
    controller._keep_handoff("d", object(), 11)  # larger than the whole budget: not kept
    controller._keep_handoff("c", object(), 5)  # a replay's hand-off replaces the old one
    assert list(controller._handoffs) == ["b", "c"] and controller._handoff_tokens == 9
    controller._forget_handoff("b")
    assert list(controller._handoffs) == ["c"] and controller._handoff_tokens == 5


def test_a_closed_liveness_connection_fails_the_instance_over_at_once() -> None:
    """An instance's process holds a liveness connection to the controller; when it closes
    (the kernel does so when the process dies), the instance is down and its requests are
    handed out for failover within milliseconds, with the snapshot timeout far away. The
    late close of an earlier process's connection does not take the newer process down."""
    from starserve.cluster.liveness import connect

    made = workers()
    controller = controller_for(
        LocalInstance(made[0]), [LocalInstance(made[1]), LocalInstance(made[2])]
    )
    controller.instance_timeout_s = 60.0

    async def run() -> None:
        await controller.start()
        assert controller._liveness is not None and controller._liveness_address is not None
        await controller.submit("r", [5, 6, 7], FakeParams(200))  # herd: on instance 1
        started_s = time.monotonic()
        made[1].drop_liveness()
        lost = await controller.wait_lost(2.0)
        assert lost == ["r"] and time.monotonic() - started_s < 0.5
        assert not controller.health.is_up(1) and controller.health.num_failures[1] == 1
        old = connect(*controller._liveness_address, 2, 111)  # an earlier process of 2
        new = connect(*controller._liveness_address, 2, 222)  # its replacement
        while controller._liveness.incarnation(2) != 222:
            await asyncio.sleep(0.01)
        old.close()
        await asyncio.sleep(0.2)
        assert controller.health.is_up(2), "a stale connection took the new process down"
        await controller.abort("r")
        await controller.stop()
        new.close()

    try:
        asyncio.run(run())
    finally:
        for worker in made:
            worker.stop()
