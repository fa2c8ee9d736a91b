"""Turn a finished simulation into per-request `RequestRecord`s (every token's time).

Token 1 comes from prefill; every later token comes from one decode step, and the step's end
time is recovered from the chunk log of the instance that ran it (chunk.py's formula).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from starserve.metrics import RequestRecord
from starserve.sim.chunk import Chunk
from starserve.sim.cluster import ClusterSim


def _step_times(log: Sequence[Chunk], starts: list[int], first: int, last: int) -> np.ndarray:
    """End times of steps first..last (inclusive) of one instance."""
    out = []
    step = first
    while step <= last:
        c = bisect.bisect_right(starts, step - 1) - 1  # the chunk whose range holds `step`
        chunk = log[c]
        end = last if c + 1 == len(log) else min(last, log[c + 1].first_step)
        i = np.arange(step - chunk.first_step, end - chunk.first_step + 1, dtype=np.float64)
        out.append(
            chunk.start_time_s
            + i * (chunk.fixed_s + chunk.kv_first_s)
            + chunk.kv_growth_s * i * (i - 1) / 2.0
        )
        step = end + 1
    return np.concatenate(out) if out else np.empty(0)


def request_records(sim: ClusterSim) -> list[RequestRecord]:
    """One record per request, in request order."""
    starts_cache: dict[int, list[int]] = {}
    records = []
    for request in sim.requests:
        parts = [np.array([request.first_token_time_s])]
        for interval in request.intervals:
            instance = sim.decode[interval.instance_id]
            starts = starts_cache.get(interval.instance_id)
            if starts is None:
                starts = starts_cache[interval.instance_id] = [
                    c.first_step for c in instance.chunk_log
                ]
            parts.append(
                _step_times(instance.chunk_log, starts, interval.first_step, interval.last_step)
            )
        times = np.concatenate(parts)
        records.append(
            RequestRecord(
                send_time_s=request.arrival_time_s,
                token_times_s=tuple(times.tolist()),
                num_prompt_tokens=request.num_prompt_tokens,
            )
        )
    return records
