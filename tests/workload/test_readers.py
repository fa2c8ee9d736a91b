"""User files: CSV (timed or lengths only) and JSONL prompts; malformed files."""

from pathlib import Path

import pytest

from starserve.errors import StarserveError
from starserve.workload import describe, load_workload
from starserve.workload.readers import approx_num_tokens


def test_timed_csv_keeps_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text(
        "arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,10,5\n0.5,20,1\n2.0,30,7\n"
    )
    requests = load_workload(str(path))
    assert [(r.arrival_time_s, r.num_prompt_tokens, r.num_output_tokens) for r in requests] == [
        (0.0, 10, 5),
        (0.5, 20, 1),
        (2.0, 30, 7),
    ]
    assert [r.request_id for r in requests] == ["mine-0", "mine-1", "mine-2"]
    stats = describe(requests)
    assert stats.time_span_s == 2.0 and stats.mean_rate_per_s == 1.5
    assert load_workload(str(path), num_requests=2) == requests[:2]


def test_lengths_only_csv_arrives_at_zero(tmp_path: Path) -> None:
    path = tmp_path / "lengths.csv"
    path.write_text("num_prefill_tokens,num_decode_tokens,extra\n3,4,x\n5,6,y\n")
    requests = load_workload(str(path))
    assert {r.arrival_time_s for r in requests} == {0.0} and len(requests) == 2


def test_jsonl_prompts(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        '{"prompt": "hello there", "num_output_tokens": 12}\n\n{"prompt": "x\\u2028y", "id": "b"}\n'
    )
    requests = load_workload(str(path))
    assert [r.request_id for r in requests] == ["prompts-0", "prompts-b"]
    assert requests[0].prompt == "hello there" and requests[0].num_output_tokens == 12
    assert requests[0].num_prompt_tokens == approx_num_tokens("hello there") == 3
    assert requests[1].num_output_tokens == 0  # unknown


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.csv", "arrived_at,num_prefill_tokens\n0,1\n", "missing column"),
        (
            "b.csv",
            "arrived_at,num_prefill_tokens,num_decode_tokens\n0,abc,1\n",
            "row 2: column num_prefill_tokens: not a number",
        ),
        ("c.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,-4\n", "negative"),
        ("d.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1.5,4\n", "not an integer"),
        ("e.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n", "no data rows"),
        ("f.jsonl", '{"prompt": "ok"}\n{"prompt": \n', "line 2: not valid JSON"),
        ("g.jsonl", '{"text": "no prompt field"}\n', "missing or empty string field 'prompt'"),
        ("h.jsonl", '["not", "an", "object"]\n', "expected a JSON object"),
        ("i.jsonl", '{"prompt": "p", "num_output_tokens": -1}\n', "non-negative"),
        ("j.txt", "whatever\n", "unsupported file type"),
    ],
)
def test_malformed_user_files(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(StarserveError, match=message) as err:
        load_workload(str(path))
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(StarserveError, match="no such file") as err:
        load_workload(str(tmp_path / "absent.csv"))
    assert "absent.csv" in str(err.value)
