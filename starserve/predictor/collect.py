"""Collect labelled hidden states by serving real prompts through our engine.

Each prompt is answered `samples_per_prompt` times with nucleus sampling (seeded per answer).
The engine's tap gives the last-layer state (and one middle layer for TRAIL) at the end of the
prompt and every k generated tokens; when an answer finishes, its final length labels all its
points. Finished answers are written in shards; the manifest lists what is done, so a rerun
resumes where a killed one stopped.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from starserve.config import Settings
from starserve.errors import StarserveError
from starserve.predictor.data import (
    MANIFEST_NAME,
    POOL_ARRAYS,
    SHARD_GLOB,
    RequestRecord,
    Shard,
    read_shard,
)
from starserve.predictor.data import write_shard as _write_shard
from starserve.predictor.prompts import PromptRow, interleave, read_prompts


class CollectSettings(Settings):
    """How answers are sampled and recorded (stored in the manifest; a resume must match)."""

    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.9
    samples_per_prompt: int = 2
    interval: int = 16
    # engine index (0-based) of the TRAIL layer: output of decoder layer 20 of 30, picked by the
    # sweep over layers 8..20 in docs/predictor.md
    middle_layer: int = 19
    max_prompt_tokens: int = 1024
    max_prompts_per_file: int | None = None
    seed: int = 0
    # The engine's dtype: bfloat16 decodes about twice as fast here (AMX, native kernels) and is
    # what `starserve serve` runs, so the predictor learns the states it will be served.
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    # Append "reason step by step" (prompts.STEP_BY_STEP) to math problems: long, reasoning-style
    # answers. Other sets (chat, Arena-Hard) are served as they are.
    step_by_step: bool = False
    # Record each token's predictive entropy and the segment pools of data.POOL_ARRAYS (the PLP
    # baseline's entropy-guided pooling; STAR's pooling over recent states). The engine then
    # hands out the state of every token, the collector keeps a tap every `interval`.
    pool_states: bool = True


@dataclass(slots=True)
class Job:
    row: PromptRow
    sample_index: int

    @property
    def request_id(self) -> str:
        return f"{self.row.prompt_id}#{self.sample_index}"

    def seed(self, base: int) -> int:
        digest = hashlib.sha256(f"{base}:{self.request_id}".encode()).hexdigest()
        return int(digest[:8], 16)


@dataclass(slots=True)
class SegmentPool:
    """Running sums over the generated tokens since the previous tap (see data.POOL_ARRAYS)."""

    weighted: np.ndarray | None = None  # sum e^H h
    plain: np.ndarray | None = None  # sum h
    weight: float = 0.0  # sum e^H
    entropy: float = 0.0  # sum H
    count: int = 0

    def add(self, hidden: np.ndarray, entropy: float) -> None:
        w = float(np.exp(entropy))
        if self.weighted is None or self.plain is None:
            self.weighted, self.plain = w * hidden, hidden.copy()
        else:
            self.weighted += w * hidden
            self.plain += hidden
        self.weight += w
        self.entropy += entropy
        self.count += 1

    def flush(self) -> dict[str, np.ndarray | float]:
        """This segment's pools; the sums restart for the next one."""
        assert self.weighted is not None and self.plain is not None and self.count > 0
        out: dict[str, np.ndarray | float] = {
            "pool_entropy": (self.weighted / self.weight).astype(np.float16),
            "pool_weight": self.weight,
            "pool_mean": (self.plain / self.count).astype(np.float16),
            "segment_entropy": self.entropy / self.count,
        }
        self.weighted, self.plain, self.weight, self.entropy, self.count = None, None, 0.0, 0.0, 0
        return out


@dataclass(slots=True)
class InFlight:
    job: Job
    num_prompt_tokens: int
    generated: list[int] = field(default_factory=list)
    last: list[np.ndarray] = field(default_factory=list)
    middle: list[np.ndarray] = field(default_factory=list)
    segment: SegmentPool = field(default_factory=SegmentPool)
    pools: dict[str, list] = field(default_factory=lambda: {name: [] for name in POOL_ARRAYS})

    def add_token(
        self,
        generated: int,
        interval: int,
        hidden_last: np.ndarray | None,
        hidden_middle: np.ndarray | None,
        entropy: float | None,
    ) -> None:
        """One generated token's outputs; a tap every `interval` tokens from the first on.

        With `entropy` the state of every token arrives (for the segment pools); without, the
        engine only hands out states at taps.
        """
        if hidden_last is None:
            return
        if entropy is not None:
            self.segment.add(hidden_last, entropy)
        if (generated - 1) % interval != 0:
            return
        self.generated.append(generated)
        self.last.append(hidden_last.astype(np.float16))
        if hidden_middle is not None:
            self.middle.append(hidden_middle.astype(np.float16))
        if entropy is not None:
            for name, value in self.segment.flush().items():
                self.pools[name].append(value)


def plan_jobs(prompt_files: list[Path], settings: CollectSettings) -> list[Job]:
    """Every (prompt, sample), files interleaved, each file's prompts in a seeded order."""
    groups = []
    for path in prompt_files:
        rows = read_prompts(path)
        random.Random(settings.seed).shuffle(rows)
        rows = rows[: settings.max_prompts_per_file]
        if settings.step_by_step:
            rows = [row.with_step_by_step() for row in rows]
        groups.append(rows)
    return [Job(row, s) for row in interleave(groups) for s in range(settings.samples_per_prompt)]


def open_manifest(out_dir: Path, settings: CollectSettings, model: str) -> dict:
    """The existing manifest (settings must match) or a fresh one."""
    path = out_dir / MANIFEST_NAME
    wanted = settings.model_dump()
    if path.is_file():
        manifest = json.loads(path.read_text())
        if manifest.get("settings") != wanted:
            raise StarserveError(
                f"{out_dir} holds a collection made with other settings; use another --out"
            )
        return manifest
    return {
        "format": "starserve-predictor-data",
        "model": model,
        "settings": wanted,
        "max_tokens": settings.max_tokens,
        "interval": settings.interval,
        "middle_layer": settings.middle_layer,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "prompt_files": [],
        "num_requests": 0,
        "num_skipped_long_prompts": 0,
        "step_samples": [],
    }


def done_request_ids(out_dir: Path) -> set[str]:
    done = set()
    for path in sorted(out_dir.glob(SHARD_GLOB)):
        for r in read_shard(path).requests:
            done.add(f"{r.prompt_id}#{r.sample_index}")
    return done


def to_record(flight: InFlight, num_output_tokens: int, finish_reason: str) -> RequestRecord:
    row = flight.job.row
    return RequestRecord(
        prompt_id=row.prompt_id,
        prompt_set=row.prompt_set,
        sample_index=flight.job.sample_index,
        prompt=row.text,
        num_prompt_tokens=flight.num_prompt_tokens,
        num_output_tokens=num_output_tokens,
        finish_reason=finish_reason,
    )


def build_shard(finished: list[tuple[RequestRecord, InFlight]]) -> Shard:
    point_request, generated, last, middle = [], [], [], []
    pools: dict[str, list] = {name: [] for name in POOL_ARRAYS}
    for index, (_, flight) in enumerate(finished):
        point_request += [index] * len(flight.generated)
        generated += flight.generated
        last += flight.last
        middle += flight.middle
        for name in POOL_ARRAYS:
            pools[name] += flight.pools[name]
    has_middle = len(middle) == len(last) and len(last) > 0
    complete = [name for name in POOL_ARRAYS if len(pools[name]) == len(last) and last]
    return Shard(
        requests=[record for record, _ in finished],
        point_request=np.asarray(point_request, dtype=np.int32),
        point_generated=np.asarray(generated, dtype=np.int32),
        hidden_last=np.stack(last).astype(np.float16),
        hidden_middle=np.stack(middle).astype(np.float16) if has_middle else None,
        pools={name: np.asarray(pools[name], dtype=POOL_ARRAYS[name]) for name in complete},
    )


def write_shard(
    out_dir: Path, manifest: dict, finished: list[tuple[RequestRecord, InFlight]]
) -> None:
    """Append a shard and update the manifest (shard first: a crash between them only repeats)."""
    if not finished:
        return
    index = len(list(out_dir.glob(SHARD_GLOB)))
    _write_shard(out_dir / f"shard-{index:05d}.safetensors", build_shard(finished))
    manifest["num_requests"] += len(finished)
    manifest["step_samples"] = manifest["step_samples"][-20000:]
    tmp = out_dir / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest) + "\n")
    tmp.replace(out_dir / MANIFEST_NAME)


def complete_prefix_mask(request_ids: list[str], jobs: list[Job]) -> np.ndarray:
    """Requests among the first planned jobs that all finished (stopped runs only).

    Short answers finish first, so the answers of a run stopped early are biased short. Plan order
    is a seeded shuffle, independent of length: keeping only the longest prefix of the plan whose
    answers all finished gives an unbiased sample.
    """
    finished = set(request_ids)
    prefix: set[str] = set()
    for job in jobs:
        if job.request_id not in finished:
            break
        prefix.add(job.request_id)
    return np.array([rid in prefix for rid in request_ids], dtype=bool)


def trim_to_complete_prefix(
    data_dir: Path,
    prompt_files: list[Path],
    out_dir: Path,
    is_too_long: Callable[[str], bool],
) -> dict:
    """Write the unbiased part of a stopped collection to `out_dir` (one shard + manifest).

    The plan is re-created from the same prompt files (same order) and the manifest's settings;
    prompts the collection skipped for length (`is_too_long(text)`) are passed over as it did.
    Returns the new manifest.
    """
    from starserve.predictor.data import load_dataset

    dataset = load_dataset(data_dir)
    settings = CollectSettings(**dataset.meta["settings"])
    jobs = [job for job in plan_jobs(prompt_files, settings) if not is_too_long(job.row.text)]
    request_ids = [f"{r.prompt_id}#{r.sample_index}" for r in dataset.requests]
    kept = dataset.subset(complete_prefix_mask(request_ids, jobs))
    if not kept.requests:
        raise StarserveError(
            f"{data_dir}: the first planned answer never finished; nothing to keep"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    shard = Shard(kept.requests, kept.point_request, kept.point_generated, kept.hidden_last,
                  kept.hidden_middle, kept.pools)  # fmt: skip
    _write_shard(out_dir / "shard-00000.safetensors", shard)
    manifest = dict(dataset.meta, num_requests=len(kept.requests), trimmed_from=str(data_dir))
    manifest["num_planned_answers"] = len(jobs)
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest) + "\n")
    return manifest
