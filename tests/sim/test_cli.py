"""`starserve simulate` end to end on a tiny scenario (subprocess: the real entry point)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

SCENARIO = """
name: tiny
cluster: {num_prefill_instances: 1, num_decode_instances: 2, kv_capacity_tokens: 30000}
workload: {name: PLACEHOLDER, arrival: poisson, rate_per_s: 4.0}
slos: {ttft_ms: 3000, tpot_ms: 60}
rate_search: {initial_rate_per_s: 4.0, rel_tol: 0.3}
policies: [round_robin, llumnix, star]
"""


def _write_trace(path: Path, num: int = 80) -> None:
    rng = np.random.default_rng(0)
    rows = ["arrived_at,num_prefill_tokens,num_decode_tokens"]
    for i in range(num):
        rows.append(f"{i * 0.25:.3f},{int(rng.integers(50, 600))},{int(rng.integers(10, 900))}")
    path.write_text("\n".join(rows) + "\n")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "starserve", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_simulate_writes_results_and_plots(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    _write_trace(trace)
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(SCENARIO.replace("PLACEHOLDER", str(trace)))
    out = tmp_path / "out"
    done = _run(
        str(scenario), "--out", str(out), "--trace", str(trace), "--policies", "round_robin,star"
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["scenario"] == "tiny"
    assert list(results["policies"]) == ["round_robin", "star"]
    keys = {"p99_tpot_ms", "mean_tpot_ms", "p99_ttft_ms", "slo_attainment", "goodput_rps",
            "max_rate_at_90pct_slo", "preemptions", "migrations"}  # fmt: skip
    for entry in results["policies"].values():
        assert keys <= set(entry)
        assert entry["summary"]["completed"] == 80
        assert entry["max_rate_at_90pct_slo"] > 0
        timeline = entry["load_timeline"]
        assert len(timeline["times_s"]) == len(timeline["kv_utilization"]) > 5
        assert all(
            len(row) == 2 and all(0 <= u <= 1 for u in row) for row in timeline["kv_utilization"]
        )
    for name in ("tpot_cdf.png", "load_spread.png", "goodput_vs_rate.png"):
        assert (out / name).stat().st_size > 1000


def test_bad_input_is_one_line_error(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.yaml"
    scenario.write_text("name: x\nslos: {ttft_ms: 1, tpot_ms: 1}\ncluster: {gpu: tpu}\n")
    done = _run(str(scenario), "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and "unknown gpu" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    good = tmp_path / "good.yaml"
    good.write_text("name: x\nslos: {ttft_ms: 1, tpot_ms: 1}\n")
    done = _run(str(good), "--out", str(tmp_path / "o"), "--policies", "star,nope")
    assert done.returncode == 2 and "unknown policy 'nope'" in done.stderr
