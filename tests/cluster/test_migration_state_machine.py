"""The migration state machine over two in-process workers, on the real engine and on a
KV-dependent fake one (whose next token is a function of the KV contents, so a mis-copied
block always shows).

Each test compares the reassembled output stream with a run that never migrates: a lost,
repeated or mis-copied token changes the text; every abort path must leave the request
finishing on the source with exactly that output and no KV block held anywhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from starserve.cluster.handles import LocalInstance
from starserve.cluster.migration import Migration, MigrationConfig
from starserve.cluster.types import MigrationRecord, MigrationStatus, OutputChunk, WorkerConfig
from starserve.cluster.worker import InstanceWorker
from starserve.server.streams import RequestStream
from tests.cluster.fake_engine import FakeEngine, FakeParams

MAX_TOKENS = 24


@dataclass(slots=True)
class Setup:
    make_engine: Callable[[int], Any]  # num_blocks -> engine
    prompt: list[int]
    params: Any
    reference: list[int] | None = None  # the output without migration (computed once)


@pytest.fixture(scope="module", params=["fake", "real"])
def setup(request: pytest.FixtureRequest) -> Setup:
    if request.param == "fake":
        return Setup(
            lambda n: FakeEngine(num_blocks=n),
            [5, 9, 11, 42, 17, 8, 3, 21, 30],
            FakeParams(MAX_TOKENS),
        )
    from starserve.engine import Engine, EngineConfig, SamplingParams

    first = Engine(EngineConfig(num_kv_blocks=64, num_threads=1))
    weights = first.weights

    def make(num_blocks: int) -> Any:
        return Engine(EngineConfig(num_kv_blocks=num_blocks, num_threads=1), weights=weights)

    prompt = first.apply_chat_template(
        [{"role": "user", "content": "Write a short poem about rivers."}]
    )
    return Setup(
        make, list(prompt), SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    )


def make_worker(setup: Setup, instance_id: int, num_blocks: int = 64) -> InstanceWorker:
    return InstanceWorker(WorkerConfig(instance_id), engine=setup.make_engine(num_blocks))


class SteppingSource(LocalInstance):
    """The source keeps decoding between stages and before the pause, as under its thread."""

    def __init__(self, worker: InstanceWorker, steps: int = 3, finish_on_export: int = -1):
        super().__init__(worker)
        self.steps = steps
        self.finish_on_export = finish_on_export
        self.num_exports = 0

    def _advance(self, steps: int) -> None:
        for _ in range(steps):
            self.worker.step_once()

    async def export_stage(self, request_id: str, since_stage: int | None) -> Any:
        if self.num_exports == self.finish_on_export:
            self._advance(10 * MAX_TOKENS)
        self._advance(self.steps)
        self.num_exports += 1
        return await super().export_stage(request_id, since_stage)

    async def pause_and_export(self, request_id: str, since_stage: int | None) -> Any:
        self._advance(self.steps)  # tokens that only the final stage carries
        return await super().pause_and_export(request_id, since_stage)


def run_to_end(*workers: InstanceWorker) -> None:
    for worker in workers:
        while worker.engine.has_unfinished_requests():
            worker.step_once()


def reference_tokens(setup: Setup) -> list[int]:
    if setup.reference is None:
        worker = make_worker(setup, 0)
        worker.add_request("r", setup.prompt, setup.params)
        run_to_end(worker)
        setup.reference = reassemble(worker.wait_outputs(0))
    return setup.reference


def migrate_and_finish(
    setup: Setup, dst_blocks: int = 64, fault: str | None = None, finish_on_export: int = -1
) -> tuple[MigrationRecord, list[int], tuple[InstanceWorker, InstanceWorker]]:
    src, dst = make_worker(setup, 0), make_worker(setup, 1, dst_blocks)
    dst.set_fault(fault)
    src.add_request("r", setup.prompt, setup.params)
    for _ in range(6):
        src.step_once()
    source = SteppingSource(src, finish_on_export=finish_on_export)
    config = MigrationConfig(final_stage_max_blocks=0, reserve_headroom_tokens=16)
    record = asyncio.run(Migration("r", 0, 1, source, LocalInstance(dst), config).run())
    run_to_end(src, dst)
    chunks: list[OutputChunk] = [*dst.wait_outputs(0), *src.wait_outputs(0)]  # out of order
    return record, reassemble(chunks), (src, dst)


def reassemble(chunks: list[OutputChunk]) -> list[int]:
    async def run() -> list[int]:
        stream = RequestStream("r")
        for chunk in chunks:
            stream.push(chunk)
        assert stream.finished, "the stream never reached its final token"
        return [t async for piece in stream.pieces() for t in piece.token_ids]

    return asyncio.run(run())


def assert_no_blocks_held(*workers: InstanceWorker) -> None:
    for worker in workers:
        stats = worker.engine.stats()
        assert stats.num_free_blocks == stats.num_total_blocks, (
            f"instance {worker.instance_id} leaks"
        )


def test_completed_migration_keeps_the_exact_stream(setup: Setup) -> None:
    record, tokens, (src, dst) = migrate_and_finish(setup)
    assert record.status is MigrationStatus.FINISHED, record.reason
    assert record.num_stages == 3  # full copy, one increment, the paused final stage
    assert len(tokens) == MAX_TOKENS
    assert tokens == reference_tokens(setup)
    assert dst.num_steps > 0, "the destination never decoded the request"
    assert_no_blocks_held(src, dst)


def test_destination_without_room_aborts_and_source_finishes(setup: Setup) -> None:
    record, tokens, workers = migrate_and_finish(setup, dst_blocks=2)
    assert record.status is MigrationStatus.ABORTED_DST
    assert tokens == reference_tokens(setup)
    assert_no_blocks_held(*workers)


@pytest.mark.parametrize("fault", ["reserve", "write_stage", "commit"])
def test_destination_failure_rolls_back(setup: Setup, fault: str) -> None:
    record, tokens, workers = migrate_and_finish(setup, fault=fault)
    assert record.num_stages == (3 if fault == "commit" else 1)
    assert record.status is MigrationStatus.ABORTED_DST
    assert fault in record.reason
    assert tokens == reference_tokens(setup)
    assert_no_blocks_held(*workers)


def test_request_finishing_mid_copy_aborts_on_the_source(setup: Setup) -> None:
    record, tokens, workers = migrate_and_finish(setup, finish_on_export=1)
    assert record.status is MigrationStatus.ABORTED_SRC
    assert tokens == reference_tokens(setup)
    assert_no_blocks_held(*workers)
