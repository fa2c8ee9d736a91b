"""On-disk format of collected predictor data, and the in-memory dataset built from it.

A collection directory holds `manifest.json` (how the data was collected) and shards
`shard-NNNNN.safetensors`. Each shard stores, for a batch of finished requests, one row per
*prediction point* (a hidden-state tap while the request decoded): the last-layer state, the
optional middle-layer state (TRAIL baseline) and the number of tokens generated at the tap.
The requests themselves (prompt, final output length, finish reason) travel as JSON in the
safetensors metadata, so a shard is one self-describing file. States are float16.

Collections made with token entropies (`CollectSettings.pool_states`) also store, per point,
the pooled states of the *segment* of tokens since the previous tap (see `POOL_ARRAYS`); older
collections simply lack them (`Dataset.pools` is empty) and stay readable.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from starserve.errors import StarserveError

MANIFEST_NAME = "manifest.json"
SHARD_GLOB = "shard-*.safetensors"
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)  # train / validation / test, by prompt
# Optional per-point arrays over the segment of generated tokens ending at the tap (the tokens
# since the previous tap, this one included), so pools over any run of segments can be rebuilt:
POOL_ARRAYS = {
    # sum_t e^{H_t} h_t / sum_t e^{H_t}: last-layer states weighted by softmax of entropy H
    "pool_entropy": np.float16,
    "pool_weight": np.float32,  # sum_t e^{H_t}: combines segment pools into longer ones
    "pool_mean": np.float16,  # plain mean of the last-layer states
    "segment_entropy": np.float32,  # mean entropy H (nats) over the segment's tokens
}


@dataclass(slots=True)
class RequestRecord:
    """One sampled answer: which prompt, how long it ran, why it stopped."""

    prompt_id: str
    prompt_set: str
    sample_index: int
    prompt: str
    num_prompt_tokens: int
    num_output_tokens: int
    finish_reason: str  # "stop" or "length" (ran to the cap)


@dataclass(slots=True)
class Shard:
    """Finished requests and their prediction points (rows index `requests`)."""

    requests: list[RequestRecord]
    point_request: np.ndarray  # [P] int32
    point_generated: np.ndarray  # [P] int32, tokens generated when the state was tapped
    hidden_last: np.ndarray  # [P, H] float16
    hidden_middle: np.ndarray | None  # [P, H] float16
    pools: dict[str, np.ndarray] = field(default_factory=dict)  # POOL_ARRAYS present


def write_shard(path: Path, shard: Shard) -> None:
    """Write one shard atomically (temp file + rename), so a killed run leaves no half shard."""
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = {
        "point_request": shard.point_request.astype(np.int32),
        "point_generated": shard.point_generated.astype(np.int32),
        "hidden_last": shard.hidden_last.astype(np.float16),
    }
    if shard.hidden_middle is not None:
        tensors["hidden_middle"] = shard.hidden_middle.astype(np.float16)
    for name, array in shard.pools.items():
        tensors[name] = array.astype(POOL_ARRAYS[name])
    meta = {"requests": json.dumps([asdict(r) for r in shard.requests])}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def read_shard(path: Path) -> Shard:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        meta = handle.metadata() or {}
        keys = set(handle.keys())
        arrays = {key: handle.get_tensor(key) for key in keys}
    if "requests" not in meta or "hidden_last" not in arrays:
        raise StarserveError(f"{path}: not a predictor data shard")
    requests = [RequestRecord(**row) for row in json.loads(meta["requests"])]
    return Shard(
        requests=requests,
        point_request=arrays["point_request"],
        point_generated=arrays["point_generated"],
        hidden_last=arrays["hidden_last"],
        hidden_middle=arrays.get("hidden_middle"),
        pools={name: arrays[name] for name in POOL_ARRAYS if name in arrays},
    )


def split_of(prompt_id: str) -> str:
    """'train' / 'val' / 'test' from a stable hash of the prompt id: never split by sample."""
    bucket = int(hashlib.sha256(prompt_id.encode()).hexdigest()[:8], 16) / 0x100000000
    if bucket < SPLIT_FRACTIONS[0]:
        return "train"
    if bucket < SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]:
        return "val"
    return "test"


@dataclass(slots=True)
class Dataset:
    """All prediction points of a set of requests, sorted by (request, tokens generated)."""

    requests: list[RequestRecord]
    point_request: np.ndarray
    point_generated: np.ndarray
    hidden_last: np.ndarray
    hidden_middle: np.ndarray | None
    max_output_tokens: int  # the collection's output cap
    meta: dict
    pools: dict[str, np.ndarray] = field(default_factory=dict)  # per point, see POOL_ARRAYS

    @property
    def num_points(self) -> int:
        return int(self.point_request.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.hidden_last.shape[1])

    def output_lengths(self) -> np.ndarray:
        return np.array([r.num_output_tokens for r in self.requests], dtype=np.int64)

    def remaining(self) -> np.ndarray:
        """True remaining tokens at each point (capped answers finish at the cap, as served)."""
        return self.output_lengths()[self.point_request] - self.point_generated

    def progress(self) -> np.ndarray:
        lengths = np.maximum(self.output_lengths()[self.point_request], 1)
        return np.clip(self.point_generated / lengths, 0.0, 1.0)

    def subset(self, request_mask: np.ndarray) -> Dataset:
        """The dataset restricted to the requests where `request_mask` is true."""
        keep_ids = np.flatnonzero(request_mask)
        new_index = np.full(len(self.requests), -1, dtype=np.int64)
        new_index[keep_ids] = np.arange(len(keep_ids))
        rows = request_mask[self.point_request]
        return Dataset(
            requests=[self.requests[i] for i in keep_ids],
            point_request=new_index[self.point_request[rows]].astype(np.int32),
            point_generated=self.point_generated[rows],
            hidden_last=self.hidden_last[rows],
            hidden_middle=None if self.hidden_middle is None else self.hidden_middle[rows],
            max_output_tokens=self.max_output_tokens,
            meta=self.meta,
            pools={name: array[rows] for name, array in self.pools.items()},
        )

    def split(self, name: str) -> Dataset:
        mask = np.array([split_of(r.prompt_id) == name for r in self.requests], dtype=bool)
        return self.subset(mask)


def concat_shards(shards: list[Shard], max_output_tokens: int, meta: dict) -> Dataset:
    """One dataset from many shards, points sorted by (request, generated)."""
    if not shards:
        raise StarserveError("no collected data: the directory has no shards")
    requests: list[RequestRecord] = []
    parts_req, parts_gen, parts_last, parts_mid = [], [], [], []
    has_middle = all(s.hidden_middle is not None for s in shards)
    pool_names = [name for name in POOL_ARRAYS if all(name in s.pools for s in shards)]
    for shard in shards:
        parts_req.append(shard.point_request.astype(np.int64) + len(requests))
        parts_gen.append(shard.point_generated.astype(np.int32))
        parts_last.append(shard.hidden_last)
        if has_middle and shard.hidden_middle is not None:
            parts_mid.append(shard.hidden_middle)
        requests.extend(shard.requests)
    point_request = np.concatenate(parts_req)
    point_generated = np.concatenate(parts_gen)
    order = np.lexsort((point_generated, point_request))
    return Dataset(
        requests=requests,
        point_request=point_request[order].astype(np.int32),
        point_generated=point_generated[order],
        hidden_last=np.concatenate(parts_last)[order],
        hidden_middle=np.concatenate(parts_mid)[order] if has_middle else None,
        max_output_tokens=max_output_tokens,
        meta=meta,
        pools={name: np.concatenate([s.pools[name] for s in shards])[order] for name in pool_names},
    )


def read_manifest(data_dir: Path) -> dict:
    path = data_dir / MANIFEST_NAME
    if not path.is_file():
        raise StarserveError(f"{data_dir}: no {MANIFEST_NAME} (not a collection directory)")
    return json.loads(path.read_text())


def load_dataset(data_dir: str | Path | list[Path]) -> Dataset:
    """Every shard of a collection directory (or of several, with the same cap and k) as one
    dataset; with several, the manifest is the first's with the prompt files of all."""
    dirs = [Path(d) for d in data_dir] if isinstance(data_dir, list) else [Path(data_dir)]
    shards, manifests = [], []
    for directory in dirs:
        if not directory.is_dir():
            raise StarserveError(f"{directory}: no such directory")
        manifests.append(read_manifest(directory))
        shards += [read_shard(path) for path in sorted(directory.glob(SHARD_GLOB))]
    first = manifests[0]
    for directory, manifest in zip(dirs[1:], manifests[1:], strict=True):
        for key in ("max_tokens", "interval"):
            if manifest.get(key) != first.get(key):
                raise StarserveError(
                    f"{directory}: {key} {manifest.get(key)} differs from {dirs[0]}'s "
                    f"{first.get(key)}; collections must share the cap and k"
                )
    meta = dict(first)
    if len(dirs) > 1:
        meta["prompt_files"] = sorted({f for m in manifests for f in m.get("prompt_files", [])})
        meta["sources"] = [str(d) for d in dirs]
    return concat_shards(shards, int(first["max_tokens"]), meta)
