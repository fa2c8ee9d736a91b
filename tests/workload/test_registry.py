"""Every registered workload loads, and file-backed ones keep every row of their file."""

import csv
import json

import pytest

from starserve.errors import StarserveError
from starserve.paths import data_dir
from starserve.workload import describe, list_workloads, load_workload
from starserve.workload.registry import WORKLOADS

FILE_BACKED = [info for info in list_workloads() if info.kind in ("trace", "lengths", "prompts")]
FILE_BACKED = [info for info in FILE_BACKED if not info.path.startswith("servegen")]


def raw_row_count(path: str) -> int:
    """Rows counted independently of the loaders: csv rows minus header, or JSON lines."""
    full = data_dir() / path
    if full.suffix == ".csv":
        with full.open(newline="") as f:
            return sum(1 for _ in csv.reader(f)) - 1
    with full.open() as f:
        return sum(1 for line in f.read().split("\n") if line.strip() and json.loads(line))


# The request/prompt files MANIFEST.md lists (its "traces" and "prompts" tables).
MANIFEST_FILES = {
    "vidur/processed_traces/splitwise_conv.csv",
    "vidur/processed_traces/splitwise_code.csv",
    "vidur/processed_traces/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv",
    "sarathi/sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
    "servegen/reason/deepseek-r1",
    "prompts/alpaca_eval_chat.jsonl",
    "arena_hard/question_v0.1.jsonl",
    "arena_hard/question_v2.0.jsonl",
    "math/math500.jsonl",
    "math/aime24.jsonl",
    "math/amc23.jsonl",
    "prompts/self_instruct_seed.jsonl",
}


def test_registry_covers_every_manifest_file() -> None:
    assert len(FILE_BACKED) == 11  # 2 traces + 2 length files + 7 prompt sets
    paths = {info.path for info in list_workloads()}
    assert paths == MANIFEST_FILES
    assert all((data_dir() / path).exists() for path in paths)


@pytest.mark.parametrize("info", FILE_BACKED, ids=lambda info: info.name)
def test_count_equals_raw_rows(info) -> None:  # type: ignore[no-untyped-def]
    requests = load_workload(info.name)
    assert describe(requests).count == raw_row_count(info.path) > 0
    assert len({r.request_id for r in requests}) == len(requests)
    if info.kind == "prompts":
        assert all(r.prompt and r.num_prompt_tokens > 0 for r in requests)
        assert all(r.num_output_tokens == 0 for r in requests)  # unknown
    else:
        assert all(r.prompt is None and r.num_prompt_tokens > 0 for r in requests)


def test_known_trace_statistics_match_the_manifest() -> None:
    conv = describe(load_workload("splitwise_conv"))
    assert conv.count == 19366 and round(conv.time_span_s) == 3502
    assert round(conv.input_tokens.mean) == 1155 and conv.input_tokens.p50 == 1020
    assert conv.output_tokens.p99 == 601 and conv.output_tokens.max == 1000
    sharegpt = describe(load_workload("sharegpt"))
    assert sharegpt.time_span_s == 0 and sharegpt.mean_rate_per_s is None
    assert round(sharegpt.output_tokens.mean) == 439 and sharegpt.output_tokens.p50 == 415


def test_num_requests_first_n_for_traces_and_seeded_sample_for_pools() -> None:
    first = load_workload("splitwise_code", num_requests=50)
    assert first == load_workload("splitwise_code")[:50]
    sample = load_workload("sharegpt", num_requests=100, seed=1)
    assert len(sample) == 100 and sample == load_workload("sharegpt", num_requests=100, seed=1)
    assert sample != load_workload("sharegpt", num_requests=100, seed=2)
    assert len({r.request_id for r in sample}) == 100
    repeated = load_workload("aime24", num_requests=75, seed=0)
    assert len(repeated) == 75 and len({r.request_id for r in repeated}) == 75
    assert {r.prompt for r in repeated} == {r.prompt for r in load_workload("aime24")}


def test_unknown_name_is_a_one_line_user_error() -> None:
    with pytest.raises(StarserveError, match="not a known workload name") as err:
        load_workload("no_such_workload")
    assert "\n" not in str(err.value)
    with pytest.raises(StarserveError, match=">= 0"):
        load_workload("sharegpt", num_requests=-1)


def test_registry_is_a_plain_dict_of_loaders() -> None:
    assert isinstance(WORKLOADS, dict) and list(WORKLOADS) == [i.name for i in list_workloads()]
