"""Measure the real engine's step latency over a grid (the body of `starserve profile`).

Decode points do not pay for a prefill: each of the batch's sequences is imported with
zero-filled KV through the engine's own migration import (`import_request`), which is exactly
how a decode instance receives requests, and then stepped. The step cost does not depend on
the KV values, only on how many there are. Prefill points run one prompt of random token ids
through the engine's chunked prefill with the token budget set to the chunk size, so one
prompt gives a row per chunk: (chunk tokens, tokens already cached).
"""

from __future__ import annotations

import datetime
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from starserve.hardware import cpu
from starserve.profile.table import COLUMNS, HardwareProfile

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ProfileGrid:
    """What to measure: decode batch sizes x total context tokens, prefill chunk sizes."""

    batch_sizes: tuple[int, ...]
    context_tokens: tuple[int, ...]  # KV tokens held by the whole batch
    chunk_sizes: tuple[int, ...]
    prefill_prompt_tokens: int  # each chunk size prefills a prompt this long
    num_steps: int  # timed decode steps per point
    num_warmup_steps: int = 2
    min_tokens_per_sequence: int = 16
    max_tokens_per_sequence: int = 4096

    def decode_points(self) -> list[tuple[int, int]]:
        """(batch size, tokens per sequence) of every decode point kept."""
        points = []
        for batch in self.batch_sizes:
            for total in self.context_tokens:
                per_seq = total // batch
                if self.min_tokens_per_sequence <= per_seq <= self.max_tokens_per_sequence:
                    points.append((batch, per_seq))
        return points

    def max_context_tokens(self) -> int:
        per_point = [b * (c + self.num_steps + self.num_warmup_steps + 2)
                     for b, c in self.decode_points()]  # fmt: skip
        return max([*per_point, self.prefill_prompt_tokens + 16])


QUICK_GRID = ProfileGrid((1, 4, 16), (256, 2048), (128, 512), 1024, num_steps=4, num_warmup_steps=1)
FULL_GRID = ProfileGrid(
    (1, 2, 4, 8, 16, 32, 64), (512, 2048, 8192, 32768), (32, 128, 256, 512, 1024), 2048, num_steps=8
)


@dataclass(frozen=True, slots=True)
class EngineSetup:
    """The engine settings profiled (those of a cluster instance by default)."""

    model: str | None = None
    dtype: str = "bfloat16"
    num_threads: int = 1
    block_size: int = 16


def _row(phase: str, batch: int, new: int, context: float, times_s: Sequence[float]) -> dict:
    ms = np.asarray(times_s) * 1000.0
    values = (phase, batch, new, round(float(context)), len(ms), float(np.median(ms)),
              float(ms.mean()), float(ms.min()))  # fmt: skip
    return dict(zip(COLUMNS, values, strict=True))


def _engine(weights: Any, setup: EngineSetup, grid: ProfileGrid, budget: int) -> Any:
    from starserve.engine import Engine, EngineConfig

    num_blocks = grid.max_context_tokens() // setup.block_size + 2 * max(grid.batch_sizes) + 8
    config = EngineConfig(
        model=setup.model, dtype=setup.dtype, num_threads=setup.num_threads,  # type: ignore[arg-type]
        block_size=setup.block_size, num_kv_blocks=num_blocks,
        max_num_seqs=max(grid.batch_sizes), max_num_batched_tokens=budget,
        max_model_len=grid.max_tokens_per_sequence + grid.prefill_prompt_tokens + 64,
    )  # fmt: skip
    return Engine(config, weights=weights)


def _synthetic_snapshot(engine: Any, request_id: str, num_tokens: int, kv: Any) -> Any:
    from starserve.engine.outputs import DetokenizerState, RequestSnapshot
    from starserve.engine.params import SamplingParams

    rng = random.Random(request_id)
    vocab = engine.weights.config.vocab_size
    return RequestSnapshot(
        request_id=request_id, stage=0,
        token_ids=[rng.randrange(vocab) for _ in range(num_tokens + 1)],
        num_prompt_tokens=num_tokens, params=SamplingParams(max_tokens=10**6, ignore_eos=True),
        rng_state=None, first_block_index=0, kv=kv, num_kv_tokens=num_tokens,
        detok=DetokenizerState(), block_size=engine.block_size,
    )  # fmt: skip


def measure_decode_point(engine: Any, grid: ProfileGrid, batch: int, per_seq: int) -> dict:
    """Median step time of `batch` sequences of `per_seq` tokens each (a few steps)."""
    import torch

    from starserve.engine.block_manager import blocks_for

    shape = list(engine.kv_cache.shape)
    shape[3] = blocks_for(per_seq, engine.block_size)
    kv = torch.zeros(shape, dtype=engine.kv_cache.dtype)
    ids = [f"decode-{batch}-{per_seq}-{i}" for i in range(batch)]
    for request_id in ids:
        engine.import_request(_synthetic_snapshot(engine, request_id, per_seq, kv))
    times, contexts = [], []
    for step in range(grid.num_warmup_steps + grid.num_steps):
        context = sum(engine.seqs[r].num_tokens for r in ids)
        engine.step()
        if step >= grid.num_warmup_steps:
            times.append(engine.last_step_time_s)
            contexts.append(context)
    for request_id in ids:
        engine.abort_request(request_id)
    engine.step()  # report the aborts, leaving the engine empty
    return _row("decode", batch, batch, float(np.mean(contexts)), times)


def measure_prefill_chunks(engine: Any, prompt_tokens: int, chunk: int) -> list[dict]:
    """One prompt through chunked prefill at budget `chunk`: a row per step."""
    from starserve.engine.params import SamplingParams

    rng = random.Random(chunk)
    vocab = engine.weights.config.vocab_size
    prompt = [rng.randrange(vocab) for _ in range(prompt_tokens)]
    engine.add_request(f"prefill-{chunk}", prompt, SamplingParams(max_tokens=1, ignore_eos=True))
    rows, cached = [], 0
    while engine.has_unfinished_requests():
        engine.step()
        new = min(chunk, prompt_tokens - cached)
        rows.append(_row("prefill", 1, new, cached, [engine.last_step_time_s]))
        cached += new
    return rows


def _meta(engine: Any, setup: EngineSetup, weights: Any) -> dict[str, str]:
    caps = cpu()
    model_config = weights.config
    return {
        "cpu": caps.model_name, "isa": caps.isa, "arch": caps.arch, "dtype": setup.dtype,
        "num_threads": str(setup.num_threads), "model": setup.model or "bundled SmolLM2-135M-Instruct",
        "num_layers": str(model_config.num_layers),
        "kv_bytes_per_token": str(engine.kv_bytes_per_token), "block_size": str(setup.block_size),
        # what a default-configured instance of this engine holds (the simulator's default)
        "kv_capacity_tokens": str(_default_capacity_tokens(setup, weights)),
        "max_num_seqs": "64", "max_num_batched_tokens": "1024",
        "created_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }  # fmt: skip


def _default_capacity_tokens(setup: EngineSetup, weights: Any) -> int:
    from starserve.engine import EngineConfig

    default = EngineConfig()
    mc = weights.config
    itemsize = 2 if setup.dtype == "bfloat16" else 4
    bytes_per_token = mc.num_layers * 2 * mc.kv_size * itemsize
    return int(default.kv_cache_memory_mb * 2**20 // bytes_per_token)


def run_profile(
    grid: ProfileGrid, setup: EngineSetup, progress: Progress, colocated: int = 0
) -> HardwareProfile:
    """Measure every grid point (next to `colocated` busy sibling engines); `progress` is
    called once per point (a progress bar)."""
    import torch

    from starserve.model.loader import load_model
    from starserve.profile.colocated import colocated_siblings

    torch.set_num_threads(setup.num_threads)
    weights = load_model(setup.model, setup.dtype)  # type: ignore[arg-type]
    progress("model loaded")
    with colocated_siblings(colocated, setup):
        profile = _measure(grid, setup, progress, weights)
    profile.meta["colocated_engines"] = str(colocated)
    return profile


def _measure(
    grid: ProfileGrid, setup: EngineSetup, progress: Progress, weights: Any
) -> HardwareProfile:
    rows = []
    decode_engine = _engine(weights, setup, grid, budget=max(grid.batch_sizes))
    # the first steps of a fresh process are slow (allocator, lazily built kernels): thrown away
    first_batch, first_per_seq = grid.decode_points()[0]
    measure_decode_point(decode_engine, grid, first_batch, first_per_seq)
    for batch, per_seq in grid.decode_points():
        rows.append(measure_decode_point(decode_engine, grid, batch, per_seq))
        progress(f"decode B={batch} K={batch * per_seq}")
    for chunk in grid.chunk_sizes:
        engine = _engine(weights, setup, grid, budget=chunk)
        rows.extend(measure_prefill_chunks(engine, grid.prefill_prompt_tokens, chunk))
        progress(f"prefill chunk={chunk}")
    meta = _meta(decode_engine, setup, weights)
    return HardwareProfile(meta, pd.DataFrame(rows, columns=list(COLUMNS)))


def num_progress_steps(grid: ProfileGrid) -> int:
    return 1 + len(grid.decode_points()) + len(grid.chunk_sizes)
