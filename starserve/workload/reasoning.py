"""Sampling and trace generation for ServeGen's DeepSeek-R1 reasoning workload.

Two ways to use the data (see `servegen.py` for its format):

- `sample_servegen_reasoning`: (input, output) lengths pooled over clients and windows,
  unweighted: each request picks a (client, window) uniformly, then draws its input and output
  lengths from that window's PMFs. Arrival times are 0 (apply an arrival process).
- `servegen_reasoning_trace`: follows the trace: every client's 600-s window contributes its
  own number of requests (rate × 600 s) with gaps shaped by that window's fitted distribution
  (Gamma or Weibull, hence its burstiness), and each arrival draws its lengths from the
  client's distributions in force at that time.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from starserve.errors import StarserveError
from starserve.workload.arrivals import SeedLike, as_generator
from starserve.workload.servegen import (
    ARRIVAL_SAMPLERS,
    WINDOW_S,
    LengthWindow,
    RateWindow,
    ServeGenData,
    load_servegen,
)
from starserve.workload.types import WorkloadRequest

DAY_S = 86_400.0


def sample_servegen_reasoning(
    num_requests: int,
    seed: SeedLike = 0,
    *,
    folder: Path | None = None,
    name: str = "servegen_reasoning",
) -> list[WorkloadRequest]:
    """`num_requests` (input, output) length pairs pooled over clients and windows."""
    if num_requests < 0:
        raise StarserveError(f"number of requests must be >= 0, got {num_requests}")
    windows = load_servegen(folder).length_windows
    rng = as_generator(seed)
    picks = rng.integers(0, len(windows), size=num_requests)
    inputs = np.zeros(num_requests, dtype=np.int64)
    outputs = np.zeros(num_requests, dtype=np.int64)
    for window_index in np.unique(picks):
        rows = np.flatnonzero(picks == window_index)
        inputs[rows], outputs[rows] = _draw_lengths(windows[window_index], len(rows), rng)
    return [
        WorkloadRequest(f"{name}-{i}", 0.0, int(inputs[i]), int(outputs[i]))
        for i in range(num_requests)
    ]


def _draw_lengths(
    window: LengthWindow, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    source_in, source_out = window.input_tokens, window.output_tokens
    return (
        rng.choice(source_in.values, size=count, p=source_in.probs),
        rng.choice(source_out.values, size=count, p=source_out.probs),
    )


def _window_arrivals(window: RateWindow, rng: np.random.Generator) -> np.ndarray:
    """The window's requests, at its rate, with its inter-arrival law's shape.

    As ServeGen's `generate_workload` does: n = ceil(rate × 600 s) requests (the trace's own
    count: its rates are counts ÷ 600), with gaps drawn from the fitted distribution and scaled
    so they span the window. (ServeGen draws n gaps, scales them to sum to 600 s and drops the
    arrival at the window end; we draw n + 1 so that all n land strictly inside the window.)
    """
    num_requests = math.ceil(window.rate_per_s * WINDOW_S - 1e-6)
    if num_requests <= 0:
        return np.zeros(0)
    sampler = ARRIVAL_SAMPLERS[window.distribution]
    gaps_s = sampler(rng, window.shape, window.scale_s, num_requests + 1)
    return window.start_s + WINDOW_S * np.cumsum(gaps_s)[:-1] / gaps_s.sum()


def _active_length_window(
    by_client: dict[int, list[LengthWindow]], client_id: int, time_s: float
) -> LengthWindow | None:
    active = None
    for window in by_client.get(client_id, []):  # sorted by start
        if window.start_s <= time_s:
            active = window
    return active


def servegen_reasoning_trace(
    *,
    duration_s: float = WINDOW_S,
    start_s: float = 0.0,
    num_requests: int | None = None,
    seed: SeedLike = 0,
    folder: Path | None = None,
    name: str = "servegen_reasoning_trace",
) -> list[WorkloadRequest]:
    """Requests that follow the trace's per-window rate and CV from `start_s` (time of day).

    Covers `duration_s` seconds, or, if `num_requests` is given, as many whole windows as it
    takes to reach that many requests (then truncated to exactly `num_requests`). Arrival
    times are relative to `start_s`. Windows whose client has no length data yet are skipped.
    """
    if not (0 <= start_s < DAY_S and duration_s > 0):
        raise StarserveError("ServeGen trace: need 0 <= start_s < 86400 and duration_s > 0")
    end_s = DAY_S if num_requests is not None else min(DAY_S, start_s + duration_s)
    chunks = _generate(load_servegen(folder), as_generator(seed), start_s, end_s, num_requests)
    requests = _assemble(name, start_s, chunks, num_requests)
    if num_requests is not None and len(requests) < num_requests:
        raise StarserveError(
            f"ServeGen trace: only {len(requests)} requests from {start_s:.0f} s to the end of "
            f"its day, fewer than the {num_requests} asked for"
        )
    return requests


Chunk = tuple[np.ndarray, np.ndarray, np.ndarray]  # arrival times s, input and output tokens


def _generate(
    data: ServeGenData,
    rng: np.random.Generator,
    start_s: float,
    end_s: float,
    num_requests: int | None,
) -> list[Chunk]:
    """Window by window from the one holding `start_s`, until `end_s` or `num_requests`."""
    by_client: dict[int, list[LengthWindow]] = defaultdict(list)
    for window in data.length_windows:
        by_client[window.client_id].append(window)
    by_start: dict[float, list[RateWindow]] = defaultdict(list)
    for rate_window in data.rate_windows:
        by_start[rate_window.start_s].append(rate_window)
    chunks: list[Chunk] = []
    window_s = math.floor(start_s / WINDOW_S) * WINDOW_S
    while window_s < end_s and (num_requests is None or _count(chunks) < num_requests):
        for rate_window in by_start.get(window_s, []):
            lengths = _active_length_window(by_client, rate_window.client_id, window_s)
            if lengths is None:
                continue
            arrivals = _window_arrivals(rate_window, rng)
            arrivals = arrivals[(arrivals >= start_s) & (arrivals < end_s)]
            chunks.append((arrivals, *_draw_lengths(lengths, len(arrivals), rng)))
        window_s += WINDOW_S
    return chunks


def _count(chunks: list[Chunk]) -> int:
    return sum(len(times) for times, _, _ in chunks)


def _assemble(
    name: str, start_s: float, chunks: list[Chunk], num_requests: int | None
) -> list[WorkloadRequest]:
    if not chunks:
        return []
    times, inputs, outputs = (np.concatenate(column) for column in zip(*chunks, strict=True))
    order = np.argsort(times, kind="stable")[:num_requests]
    return [
        WorkloadRequest(f"{name}-{k}", float(times[i] - start_s), int(inputs[i]), int(outputs[i]))
        for k, i in enumerate(order)
    ]
