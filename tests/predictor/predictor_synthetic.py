"""Small synthetic collections whose hidden states carry the remaining length (for fast tests)."""

from __future__ import annotations

import numpy as np

from starserve.predictor.data import Dataset, RequestRecord, Shard, concat_shards


def synthetic_shard(
    num_prompts: int = 40,
    samples: int = 2,
    hidden: int = 32,
    seed: int = 0,
    cap: int = 256,
    k: int = 16,
    pools: bool = True,
) -> Shard:
    """Answers whose length depends on the prompt; states encode remaining length + noise."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=hidden)
    requests, pr, pg, last, mid = [], [], [], [], []
    for p in range(num_prompts):
        base = rng.integers(20, cap)
        for s in range(samples):
            length = int(min(cap, max(2, base + rng.normal(0, 15))))
            reason = "length" if length >= cap else "stop"
            requests.append(
                RequestRecord(f"syn:{p}", "syn", s, f"prompt number {p}", 10, length, reason)
            )
            for g in [1, *range(k, length, k)]:
                remaining = length - g
                state = rng.normal(size=hidden) * 0.3 + direction * (remaining / cap) * 3
                pr.append(len(requests) - 1)
                pg.append(g)
                last.append(state)
                mid.append(state + rng.normal(size=hidden) * 0.3)
    states = np.array(last)
    segment_pools = {}
    if pools:  # segment pools: the tap's state blurred a little, entropies positive
        count = len(states)
        segment_pools = {
            "pool_entropy": (states + rng.normal(size=states.shape) * 0.2).astype(np.float16),
            "pool_weight": rng.uniform(5.0, 50.0, size=count).astype(np.float32),
            "pool_mean": (states + rng.normal(size=states.shape) * 0.2).astype(np.float16),
            "segment_entropy": rng.uniform(0.5, 3.0, size=count).astype(np.float32),
        }
    return Shard(
        requests,
        np.array(pr, dtype=np.int32),
        np.array(pg, dtype=np.int32),
        states.astype(np.float16),
        np.array(mid, dtype=np.float16),
        segment_pools,
    )


def synthetic_dataset(**kwargs: int) -> Dataset:
    cap = kwargs.get("cap", 256)
    meta = {"max_tokens": cap, "interval": 16, "middle_layer": 12, "model": "synthetic"}
    return concat_shards([synthetic_shard(**kwargs)], cap, meta)
