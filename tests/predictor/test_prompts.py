import pytest

from starserve.errors import StarserveError
from starserve.predictor.collect import CollectSettings, complete_prefix_mask, plan_jobs
from starserve.predictor.prompts import read_prompts


def test_reads_prompt_or_problem_fields(tmp_path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text('{"id": 7, "prompt": "hi"}\n\n{"problem": "2+2?"}\n')
    rows = read_prompts(path)
    assert [r.prompt_id for r in rows] == ["set:7", "set:3"]
    assert rows[1].text == "2+2?"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{bad json\n", "line 1|:1: not valid JSON"),
        ('{"text": "x"}\n', "no non-empty 'prompt'"),
        ("", "no prompts"),
    ],
)
def test_bad_prompt_files_are_one_line_errors(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(StarserveError, match=message):
        read_prompts(path)
    with pytest.raises(StarserveError, match="no such prompt file"):
        read_prompts(tmp_path / "nope.jsonl")


def test_plan_interleaves_files_and_keeps_samples_together(tmp_path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(f'{{"prompt": "a{i}"}}\n' for i in range(5)))
    b.write_text("".join(f'{{"prompt": "b{i}"}}\n' for i in range(2)))
    jobs = plan_jobs([a, b], CollectSettings(samples_per_prompt=2, max_prompts_per_file=3))
    sets = [j.row.prompt_set for j in jobs]
    assert sets[:8] == ["a", "a", "b", "b", "a", "a", "b", "b"]
    assert len(jobs) == (3 + 2) * 2
    assert len({j.request_id for j in jobs}) == len(jobs)
    assert jobs[0].seed(0) != jobs[1].seed(0)


def test_complete_prefix_drops_answers_after_the_first_unfinished_job(tmp_path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text("".join(f'{{"prompt": "a{i}"}}\n' for i in range(4)))
    jobs = plan_jobs([path], CollectSettings(samples_per_prompt=1))
    ids = [j.request_id for j in jobs]
    finished = [ids[2], ids[0], ids[3]]  # ids[1] never finished
    assert complete_prefix_mask(finished, jobs).tolist() == [False, True, False]


def test_unicode_line_separators_inside_json_strings_do_not_split_lines(tmp_path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text('{"id": 1, "prompt": "a\u2028b"}\n{"id": 2, "prompt": "c"}\n')
    rows = read_prompts(path)
    assert [r.text for r in rows] == ["a\u2028b", "c"]
