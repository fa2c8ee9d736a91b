"""Sibling engines that keep the CPU busy while a profile is measured (`--colocated N`).

On a GPU every instance has its own device; on a CPU host the instances of a cluster share the
cores, so a step measured alone is faster than the same step next to busy siblings. Each
sibling is a separate process (as a Ray actor is) running an endless decode loop of the same
engine settings at a fixed batch; the profile is measured while they run, and they are stopped
afterwards.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIBLING_BATCH = 4
SIBLING_TOKENS_PER_SEQUENCE = 256


def _sibling(setup: Any, ready: Any, stop: Any) -> None:
    import torch

    from starserve.model.loader import load_model
    from starserve.profile.measure import ProfileGrid, _engine, _synthetic_snapshot

    torch.set_num_threads(setup.num_threads)
    weights = load_model(setup.model, setup.dtype)
    grid = ProfileGrid((SIBLING_BATCH,), (SIBLING_BATCH * SIBLING_TOKENS_PER_SEQUENCE,), (16,),
                       16, num_steps=2)  # fmt: skip
    engine = _engine(weights, setup, grid, budget=SIBLING_BATCH)
    shape = list(engine.kv_cache.shape)
    shape[3] = SIBLING_TOKENS_PER_SEQUENCE // setup.block_size + 1
    kv = torch.zeros(shape, dtype=engine.kv_cache.dtype)
    generation = 0
    ready.set()
    while not stop.is_set():
        ids = [f"sibling-{generation}-{i}" for i in range(SIBLING_BATCH)]
        for request_id in ids:
            engine.import_request(_synthetic_snapshot(engine, request_id,
                                                      SIBLING_TOKENS_PER_SEQUENCE, kv))  # fmt: skip
        for _ in range(32):  # context stays in the sibling's range
            if stop.is_set():
                break
            engine.step()
        for request_id in ids:
            engine.abort_request(request_id)
        engine.step()
        generation += 1


@contextmanager
def colocated_siblings(count: int, setup: Any) -> Iterator[None]:
    """`count` busy sibling engine processes for the duration of the block."""
    if count == 0:
        yield
        return
    context = mp.get_context("spawn")
    stop = context.Event()
    readies = [context.Event() for _ in range(count)]
    procs = [context.Process(target=_sibling, args=(setup, ready, stop), daemon=True)
             for ready in readies]  # fmt: skip
    for proc in procs:
        proc.start()
    try:
        for ready, proc in zip(readies, procs, strict=True):
            while not ready.wait(1.0):
                if not proc.is_alive():
                    raise RuntimeError(f"a colocated sibling engine exited ({proc.exitcode})")
        yield
    finally:
        stop.set()
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
