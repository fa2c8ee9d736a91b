"""The migration state machine over in-process workers with a KV-dependent fake engine.

Each test compares the reassembled output stream with a run that never migrates: a lost,
repeated or mis-copied token changes the text. The real-engine versions live in
test_migration_engine.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starserve.cluster.handles import LocalInstance
from starserve.cluster.migration import Migration, MigrationConfig
from starserve.cluster.types import MigrationStatus, OutputChunk
from starserve.cluster.worker import InstanceWorker, WorkerConfig
from starserve.server.streams import RequestStream
from tests.cluster.fake_engine import FakeEngine, FakeParams

PROMPT = [5, 9, 11, 42, 17, 8, 3, 21, 30]
MAX_TOKENS = 40


def make_worker(instance_id: int, num_blocks: int = 64) -> InstanceWorker:
    return InstanceWorker(WorkerConfig(instance_id), engine=FakeEngine(num_blocks=num_blocks))


class SteppingSource(LocalInstance):
    """The source keeps decoding between stages, as it does under its own thread."""

    def __init__(
        self, worker: InstanceWorker, steps_per_export: int = 3, finish_on_export: int = -1
    ):
        super().__init__(worker)
        self.steps_per_export = steps_per_export
        self.finish_on_export = finish_on_export
        self.num_exports = 0

    async def export_stage(self, request_id: str, since_stage: int | None) -> Any:
        if self.num_exports == self.finish_on_export:
            while self.worker.engine.has_unfinished_requests():
                self.worker.step_once()
        for _ in range(self.steps_per_export):
            self.worker.step_once()
        self.num_exports += 1
        return await super().export_stage(request_id, since_stage)

    async def pause(self, request_id: str) -> bool:
        for _ in range(self.steps_per_export):  # tokens that only the final stage carries
            self.worker.step_once()
        return await super().pause(request_id)


def reference_tokens() -> list[int]:
    worker = make_worker(0)
    worker.add_request("r", PROMPT, FakeParams(MAX_TOKENS))
    while worker.engine.has_unfinished_requests():
        worker.step_once()
    return [t for c in worker.wait_outputs(0) for t in c.token_ids]


def migrate_and_finish(
    src: InstanceWorker, dst: InstanceWorker, source: LocalInstance
) -> tuple[Any, list[int]]:
    src.add_request("r", PROMPT, FakeParams(MAX_TOKENS))
    for _ in range(6):
        src.step_once()
    migration = Migration(
        "r", 0, 1, source, LocalInstance(dst), MigrationConfig(final_stage_max_blocks=1)
    )
    record = asyncio.run(migration.run())
    for worker in (src, dst):
        while worker.engine.has_unfinished_requests():
            worker.step_once()
    chunks: list[OutputChunk] = [
        *dst.wait_outputs(0),
        *src.wait_outputs(0),
    ]  # out of order on purpose
    return record, reassemble(chunks)


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


def test_completed_migration_keeps_the_exact_stream() -> None:
    src, dst = make_worker(0), make_worker(1)
    record, tokens = migrate_and_finish(src, dst, SteppingSource(src))
    assert record.status is MigrationStatus.FINISHED
    assert record.num_stages >= 2
    assert tokens == reference_tokens()
    assert_no_blocks_held(src, dst)


def test_destination_without_room_aborts_and_source_finishes() -> None:
    src, dst = make_worker(0), make_worker(1, num_blocks=2)
    record, tokens = migrate_and_finish(src, dst, SteppingSource(src))
    assert record.status is MigrationStatus.ABORTED_DST
    assert tokens == reference_tokens()
    assert_no_blocks_held(src, dst)


def test_destination_failure_in_each_call_rolls_back() -> None:
    for fault in ("write_stage", "commit"):
        src, dst = make_worker(0), make_worker(1)
        dst.set_fault(fault)
        record, tokens = migrate_and_finish(src, dst, SteppingSource(src))
        assert record.status is MigrationStatus.ABORTED_DST, fault
        assert fault in record.reason
        assert tokens == reference_tokens(), fault
        assert_no_blocks_held(src, dst)


def test_request_finishing_mid_copy_aborts_on_the_source() -> None:
    src, dst = make_worker(0), make_worker(1)
    record, tokens = migrate_and_finish(src, dst, SteppingSource(src, finish_on_export=1))
    assert record.status is MigrationStatus.ABORTED_SRC
    assert tokens == reference_tokens()
    assert_no_blocks_held(src, dst)
