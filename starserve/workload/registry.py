"""The known workloads: a plain dict registry from name to loader, plus user files.

`load_workload(name_or_path)` accepts a registered name (see `list_workloads()`), or a path to a
user file: a CSV with `arrived_at,num_prefill_tokens,num_decode_tokens` (or only the two length
columns) or a JSONL with a `prompt` field per line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from starserve.errors import StarserveError
from starserve.paths import data_dir
from starserve.workload.arrivals import has_timestamps
from starserve.workload.readers import read_length_csv, read_prompt_jsonl
from starserve.workload.reasoning import sample_servegen_reasoning, servegen_reasoning_trace
from starserve.workload.servegen import SERVEGEN_SUBDIR
from starserve.workload.types import WorkloadRequest

# Sampled workloads (no file rows to count) produce this many requests unless told otherwise.
DEFAULT_SAMPLED_REQUESTS = 1000


@dataclass(frozen=True, slots=True)
class WorkloadInfo:
    """What `starserve workload list` shows about one registered workload."""

    name: str
    description: str
    path: str  # relative to the data directory
    kind: str  # "trace" (timestamps), "lengths", "prompts" or "sampled"


Loader = Callable[[Path, int | None, int], list[WorkloadRequest]]


@dataclass(frozen=True, slots=True)
class _Entry:
    info: WorkloadInfo
    load: Loader


def _csv(name: str) -> Loader:
    return lambda path, num, seed: select_requests(read_length_csv(path, name=name), num, seed)


def _jsonl(name: str, text_field: str, id_field: str | None) -> Loader:
    def load(path: Path, num: int | None, seed: int) -> list[WorkloadRequest]:
        rows = read_prompt_jsonl(path, text_field=text_field, id_field=id_field, name=name)
        return select_requests(rows, num, seed)

    return load


def _servegen_lengths(path: Path, num: int | None, seed: int) -> list[WorkloadRequest]:
    count = DEFAULT_SAMPLED_REQUESTS if num is None else num
    return sample_servegen_reasoning(count, seed, folder=path, name="servegen_reasoning")


def _servegen_trace(path: Path, num: int | None, seed: int) -> list[WorkloadRequest]:
    return servegen_reasoning_trace(num_requests=num, seed=seed, folder=path)


def _entry(name: str, kind: str, path: str, description: str, load: Loader) -> _Entry:
    return _Entry(WorkloadInfo(name, description, path, kind), load)


_VIDUR = "vidur/processed_traces"
_SERVEGEN = str(SERVEGEN_SUBDIR)
WORKLOADS: dict[str, _Entry] = {
    e.info.name: e
    for e in [
        _entry("splitwise_conv", "trace", f"{_VIDUR}/splitwise_conv.csv",
               "Azure LLM inference 2023, conversation service (timestamps)",
               _csv("splitwise_conv")),
        _entry("splitwise_code", "trace", f"{_VIDUR}/splitwise_code.csv",
               "Azure LLM inference 2023, code service (timestamps)", _csv("splitwise_code")),
        _entry("arxiv_summarization", "lengths",
               f"{_VIDUR}/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv",
               "arXiv summarization length pairs (Llama-2 tokenizer)",
               _csv("arxiv_summarization")),
        _entry("sharegpt", "lengths", "sarathi/sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
               "ShareGPT conversation length pairs (Sarathi-Serve, Llama-2 tokenizer)",
               _csv("sharegpt")),
        _entry("servegen_reasoning", "sampled", _SERVEGEN,
               "ServeGen DeepSeek-R1 lengths pooled over clients/windows (1000 by default)",
               _servegen_lengths),
        _entry("servegen_reasoning_trace", "trace", _SERVEGEN,
               "ServeGen DeepSeek-R1 following its per-window rate/CV (first 600 s by default)",
               _servegen_trace),
        _entry("alpaca_eval", "prompts", "prompts/alpaca_eval_chat.jsonl",
               "AlpacaEval chat instructions", _jsonl("alpaca_eval", "prompt", "id")),
        _entry("arena_hard_v0.1", "prompts", "arena_hard/question_v0.1.jsonl",
               "Arena-Hard v0.1 Chatbot Arena prompts", _jsonl("arena_hard_v0.1", "prompt", "uid")),
        _entry("arena_hard_v2.0", "prompts", "arena_hard/question_v2.0.jsonl",
               "Arena-Hard v2.0 Chatbot Arena prompts", _jsonl("arena_hard_v2.0", "prompt", "uid")),
        _entry("math500", "prompts", "math/math500.jsonl", "MATH-500 competition problems",
               _jsonl("math500", "problem", "unique_id")),
        _entry("aime24", "prompts", "math/aime24.jsonl", "AIME 2024 problems",
               _jsonl("aime24", "problem", "id")),
        _entry("amc23", "prompts", "math/amc23.jsonl", "AMC 2023 problems",
               _jsonl("amc23", "problem", "id")),
        _entry("self_instruct", "prompts", "prompts/self_instruct_seed.jsonl",
               "Self-Instruct human-written seed tasks", _jsonl("self_instruct", "prompt", "id")),
    ]
}  # fmt: skip


def list_workloads() -> list[WorkloadInfo]:
    """Every registered workload, in registry order."""
    return [entry.info for entry in WORKLOADS.values()]


def _load_user_file(path: Path) -> list[WorkloadRequest]:
    if not path.exists():
        raise StarserveError(
            f"{path}: no such file, and not a known workload name (see `starserve workload list`)"
        )
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_length_csv(path)
    if suffix in (".jsonl", ".json"):
        return read_prompt_jsonl(path)
    raise StarserveError(f"{path}: unsupported file type (expected .csv or .jsonl)")


def load_workload(
    name_or_path: str, *, num_requests: int | None = None, seed: int = 0
) -> list[WorkloadRequest]:
    """Load a registered workload by name, or a user CSV/JSONL file by path.

    `num_requests` (None keeps every row; 1000 draws / the first 600 s for ServeGen): see
    `select_requests` for files; sampled ServeGen workloads give exactly N requests.
    """
    if num_requests is not None and num_requests < 0:
        raise StarserveError(f"number of requests must be >= 0, got {num_requests}")
    entry = WORKLOADS.get(name_or_path)
    if entry is not None:
        return entry.load(data_dir() / entry.info.path, num_requests, seed)
    return select_requests(_load_user_file(Path(name_or_path)), num_requests, seed)


def select_requests(
    requests: list[WorkloadRequest], num_requests: int | None, seed: int
) -> list[WorkloadRequest]:
    """N requests of a file: the first N in time order if it has timestamps; otherwise a seeded
    random sample without replacement, repeating with fresh shuffles (ids get a `#k` suffix)
    once N exceeds the file."""
    if num_requests is None:
        return requests
    if has_timestamps(requests):
        return sorted(requests, key=lambda r: r.arrival_time_s)[:num_requests]
    rng = np.random.default_rng(seed)
    chosen: list[WorkloadRequest] = []
    repeat = 0
    while len(chosen) < num_requests:
        order = rng.permutation(len(requests))[: num_requests - len(chosen)]
        suffix = f"#{repeat}" if repeat else ""
        chosen += [
            dataclasses.replace(requests[i], request_id=requests[i].request_id + suffix)
            for i in order
        ]
        repeat += 1
    return chosen
