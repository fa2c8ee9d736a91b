"""Reassembly of a request's output from chunks of several instances."""

from __future__ import annotations

import asyncio
import random

from starserve.cluster.types import OutputChunk
from starserve.server.streams import RequestStream


def chunk(
    start: int, tokens: list[int], finished: bool = False, instance_id: int = 0
) -> OutputChunk:
    return OutputChunk("r", start, tuple(tokens), "".join(f"<{t}>" for t in tokens), finished,
                       "length" if finished else None, 7, instance_id)  # fmt: skip


def collect(stream: RequestStream) -> list[int]:
    async def run() -> list[int]:
        return [t async for piece in stream.pieces() for t in piece.token_ids]

    return asyncio.run(run())


def test_shuffled_chunks_with_repeats_come_out_in_order_once() -> None:
    rng = random.Random(0)
    chunks = [chunk(i, [100 + i], finished=(i == 29), instance_id=i // 10) for i in range(30)]
    for trial in range(20):
        arrived = chunks + rng.sample(chunks[:29], 5)  # repeats of delivered tokens
        rng.shuffle(arrived)
        stream = RequestStream("r")
        for c in arrived:
            stream.push(c)
        assert stream.finished, trial
        assert collect(stream) == [100 + i for i in range(30)]
        assert stream.num_prompt_tokens == 7


def test_overlapping_chunk_is_trimmed_and_gap_waits() -> None:
    stream = RequestStream("r")
    stream.push(chunk(0, [1, 2]))
    stream.push(chunk(3, [4], finished=True))  # a gap: token 2 missing
    assert not stream.finished
    stream.push(chunk(1, [2, 3]))  # token 1 again, then the missing one
    assert stream.finished
    assert collect(stream) == [1, 2, 3, 4]
