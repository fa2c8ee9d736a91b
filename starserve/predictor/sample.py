"""Cut the small committed sample (for tests and `--quick`) out of a full collection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from starserve.predictor.data import MANIFEST_NAME, Dataset, Shard, split_of, write_shard

SAMPLE_REQUESTS = {"train": 48, "val": 16, "test": 24}


def pick_requests(ds: Dataset, counts: dict[str, int], seed: int = 0) -> np.ndarray:
    """A request mask with whole prompts (all their samples) from each split."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(ds.requests), dtype=bool)
    for split, count in counts.items():
        prompts = sorted({r.prompt_id for r in ds.requests if split_of(r.prompt_id) == split})
        rng.shuffle(prompts)
        taken = 0
        for pid in prompts:
            rows = [i for i, r in enumerate(ds.requests) if r.prompt_id == pid]
            if taken + len(rows) > count:
                continue
            mask[rows] = True
            taken += len(rows)
    return mask


def write_sample(ds: Dataset, out_dir: Path, counts: dict[str, int] | None = None) -> Dataset:
    """Write a one-shard collection of a few whole prompts per split to `out_dir`."""
    sample = ds.subset(pick_requests(ds, counts or SAMPLE_REQUESTS))
    out_dir.mkdir(parents=True, exist_ok=True)
    shard = Shard(
        sample.requests,
        sample.point_request,
        sample.point_generated,
        sample.hidden_last,
        sample.hidden_middle,
        sample.pools,
    )
    write_shard(out_dir / "shard-00000.safetensors", shard)
    manifest = dict(ds.meta, num_requests=len(sample.requests), sample_of=ds.meta.get("model"))
    manifest["step_samples"] = ds.meta.get("step_samples", [])[-2000:]
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest) + "\n")
    return sample
