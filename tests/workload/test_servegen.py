"""ServeGen DeepSeek-R1: pooled sampling, the trace generator, and malformed files."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from starserve.errors import StarserveError
from starserve.paths import data_dir
from starserve.workload import describe, load_workload, sample_servegen_reasoning
from starserve.workload.reasoning import servegen_reasoning_trace
from starserve.workload.servegen import SERVEGEN_SUBDIR, load_servegen


def write_client(
    folder: Path, client_id: int, trace_rows: list[str], dataset: dict[str, dict[str, str]]
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"chunk-{client_id}-trace.csv").write_text("\n".join(trace_rows) + "\n")
    (folder / f"chunk-{client_id}-dataset.json").write_text(json.dumps(dataset))


PMFS = {"input_tokens": "{100: 0.5, 300: 0.5}", "output_tokens": "{10: 0.25, 50: 0.75}"}


def test_pooled_sample_matches_the_manifest_statistics() -> None:
    stats = describe(sample_servegen_reasoning(60_000, seed=7))
    # MANIFEST.md, pooled unweighted: output mean 1206 / p50 595 / p90 1815 / p99 16483 / max
    # 32768; input mean 1865 / p50 339.
    assert stats.output_tokens.mean == pytest.approx(1206, rel=0.05)
    assert stats.output_tokens.p50 == pytest.approx(595, rel=0.05)
    assert stats.output_tokens.p90 == pytest.approx(1815, rel=0.05)
    assert stats.output_tokens.max <= 32768
    assert stats.input_tokens.mean == pytest.approx(1865, rel=0.06)
    assert stats.input_tokens.p50 == pytest.approx(339, rel=0.06)


def test_sampling_is_seeded() -> None:
    assert sample_servegen_reasoning(500, 3) == sample_servegen_reasoning(500, 3)
    assert sample_servegen_reasoning(500, 3) != sample_servegen_reasoning(500, 4)
    rng = np.random.default_rng(3)
    assert sample_servegen_reasoning(500, rng) == sample_servegen_reasoning(500, 3)
    assert len(load_workload("servegen_reasoning", num_requests=123)) == 123


def expected_hour_count() -> int:
    """Σ rate × 600 s over the first hour's windows, read with csv/json, not the loader."""
    folder = data_dir() / SERVEGEN_SUBDIR
    total = 0
    for trace in folder.glob("chunk-*-trace.csv"):
        dataset = json.loads(
            trace.with_name(trace.name.replace("trace.csv", "dataset.json")).read_text()
        )
        starts = [float(k) for k, v in dataset.items() if all(s != "{}" for s in v.values())]
        with trace.open(newline="") as f:
            for row in csv.reader(f):
                if (
                    row
                    and row[3]
                    and float(row[0]) < 3600
                    and starts
                    and min(starts) <= float(row[0])
                ):
                    total += round(float(row[1]) * 600)
    return total


def test_trace_generator_follows_the_trace_rate() -> None:
    hour = servegen_reasoning_trace(duration_s=3600, seed=0)
    expected = expected_hour_count()
    assert expected > 10_000
    assert len(hour) == expected  # the trace's own per-window counts
    times = [r.arrival_time_s for r in hour]
    assert times == sorted(times) and times[0] >= 0 and times[-1] < 3600
    assert hour == servegen_reasoning_trace(duration_s=3600, seed=0)
    assert len(servegen_reasoning_trace(num_requests=2000, seed=1)) == 2000


@pytest.mark.parametrize(
    ("distribution", "shape", "scale"), [("Gamma", 0.25, 2.0), ("Weibull", 0.6, 0.35)]
)
def test_generator_reproduces_a_window_rate_and_cv(
    tmp_path: Path, distribution: str, shape: float, scale: float
) -> None:
    from math import gamma

    mean_gap = shape * scale if distribution == "Gamma" else scale * gamma(1 + 1 / shape)
    var = (
        shape * scale**2
        if distribution == "Gamma"
        else scale**2 * gamma(1 + 2 / shape) - mean_gap**2
    )
    rows = [
        f"{600 * w},{1 / mean_gap},{var**0.5 / mean_gap},{distribution},{shape},{scale}"
        for w in range(24)
    ]
    write_client(tmp_path, 0, rows, {"0": PMFS})
    requests = servegen_reasoning_trace(duration_s=24 * 600, seed=5, folder=tmp_path)
    gaps = np.diff([r.arrival_time_s for r in requests])
    assert 1 / gaps.mean() == pytest.approx(1 / mean_gap, rel=0.08)
    assert gaps.std() / gaps.mean() == pytest.approx(var**0.5 / mean_gap, rel=0.12)
    assert {r.num_prompt_tokens for r in requests} == {100, 300}
    outputs = np.array([r.num_output_tokens for r in requests])
    assert set(outputs) == {10, 50} and (outputs == 50).mean() == pytest.approx(0.75, abs=0.03)


def test_dataset_window_applies_from_its_start_and_empty_windows_are_skipped(
    tmp_path: Path,
) -> None:
    later = {"input_tokens": "{7: 1.0}", "output_tokens": "{9: 1.0}"}
    rows = ["0,1.0,1.0,Gamma,1.0,1.0", "600,0,0,,0,0", "1200,1.0,1.0,Gamma,1.0,1.0"]
    write_client(
        tmp_path,
        3,
        rows,
        {"0": PMFS, "1200": later, "600": {"input_tokens": "{}", "output_tokens": "{}"}},
    )
    requests = servegen_reasoning_trace(duration_s=1800, seed=0, folder=tmp_path)
    assert not any(600 <= r.arrival_time_s < 1200 for r in requests)
    assert {r.num_prompt_tokens for r in requests if r.arrival_time_s >= 1200} == {7}
    assert {r.num_prompt_tokens for r in requests if r.arrival_time_s < 600} == {100, 300}


@pytest.mark.parametrize(
    ("trace_rows", "dataset_text", "message"),
    [
        (["0,1,1,Gamma,1,1"], "{not json", "not valid JSON"),
        (
            ["0,1,1,Gamma,1,1"],
            json.dumps({"0": {"input_tokens": "{1: 1.0}"}}),
            "needs input_tokens",
        ),
        (
            ["0,1,1,Gamma,1,1"],
            json.dumps({"0": {**PMFS, "input_tokens": "__import__('os').getcwd()"}}),
            "not a Python dict literal",
        ),
        (
            ["0,1,1,Gamma,1,1"],
            json.dumps({"0": {**PMFS, "input_tokens": "{1: 0.2}"}}),
            "not a probability mass function",
        ),
        (["0,1,1,Gamma,1"], json.dumps({"0": PMFS}), "expected 6 columns"),
        (["0,x,1,Gamma,1,1"], json.dumps({"0": PMFS}), "non-numeric"),
        (["0,1,1,Pareto,1,1"], json.dumps({"0": PMFS}), "unknown distribution"),
    ],
)
def test_malformed_files_give_one_line_errors_naming_the_file(
    tmp_path: Path, trace_rows: list[str], dataset_text: str, message: str
) -> None:
    (tmp_path / "chunk-1-trace.csv").write_text("\n".join(trace_rows) + "\n")
    (tmp_path / "chunk-1-dataset.json").write_text(dataset_text)
    with pytest.raises(StarserveError, match=message) as err:
        load_servegen(tmp_path)
    assert "chunk-1-" in str(err.value) and "\n" not in str(err.value)


def test_missing_folder_or_trace_file(tmp_path: Path) -> None:
    with pytest.raises(StarserveError, match="no such directory"):
        load_servegen(tmp_path / "absent")
    (tmp_path / "chunk-2-dataset.json").write_text(json.dumps({"0": PMFS}))
    with pytest.raises(StarserveError, match="chunk-2-trace.csv: no such file"):
        load_servegen(tmp_path)
