"""Turn a finished simulation into per-request `RequestRecord`s (every token's time).

Token 1 comes from prefill; every later token comes from one decode step, and the step's end
time is recovered from the chunk log of the instance that ran it (chunk.py's formula).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from starserve.metrics import RequestRecord
from starserve.sim.chunk import Chunk
from starserve.sim.cluster import ClusterSim


@dataclass(frozen=True, slots=True)
class ChunkTable:
    """One instance's chunk log as arrays (one entry per chunk, in log order)."""

    first_steps: np.ndarray  # int64
    start_times_s: np.ndarray
    per_step_s: np.ndarray  # fixed_s + kv_first_s
    kv_growth_s: np.ndarray

    @staticmethod
    def of(log: Sequence[Chunk]) -> ChunkTable:
        count = len(log)
        return ChunkTable(
            np.fromiter((c.first_step for c in log), np.int64, count=count),
            np.fromiter((c.start_time_s for c in log), np.float64, count=count),
            np.fromiter((c.fixed_s + c.kv_first_s for c in log), np.float64, count=count),
            np.fromiter((c.kv_growth_s for c in log), np.float64, count=count),
        )

    def step_end_times_s(self, first: int, last: int) -> np.ndarray:
        """End times of steps first..last (inclusive): each step by the formula of the chunk
        whose range holds it (the last chunk that began before it), element by element."""
        steps = np.arange(first, last + 1)
        chunk = np.searchsorted(self.first_steps, steps - 1, side="right") - 1
        i = (steps - self.first_steps[chunk]).astype(np.float64)
        growth = self.kv_growth_s[chunk]
        return self.start_times_s[chunk] + i * self.per_step_s[chunk] + growth * i * (i - 1) / 2.0


def request_records(sim: ClusterSim) -> list[RequestRecord]:
    """One record per request, in request order."""
    tables: dict[int, ChunkTable] = {}
    records = []
    for request in sim.requests:
        parts = [np.array([request.first_token_time_s])]
        for interval in request.intervals:
            table = tables.get(interval.instance_id)
            if table is None:
                log = sim.decode[interval.instance_id].chunk_log
                table = tables[interval.instance_id] = ChunkTable.of(log)
            parts.append(table.step_end_times_s(interval.first_step, interval.last_step))
        times = np.concatenate(parts)
        records.append(
            RequestRecord(
                send_time_s=request.arrival_time_s,
                token_times_s=tuple(times.tolist()),
                num_prompt_tokens=request.num_prompt_tokens,
            )
        )
    return records
