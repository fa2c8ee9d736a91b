"""Hardware profiles: measured on the real engine, written, read back, and read by the simulator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from starserve.errors import StarserveError
from starserve.hardware import cpu
from starserve.metrics import summarize
from starserve.policy import get_policy
from starserve.profile.measure import EngineSetup, ProfileGrid, run_profile
from starserve.profile.table import COLUMNS, MEDIAN_MS, HardwareProfile, read_profile, write_profile
from starserve.sim.build import build_cluster, make_sampler
from starserve.sim.config import ClusterConfig, PredictorConfig
from starserve.sim.measured import MeasuredLatencyModel, measured_latency_model
from starserve.sim.records import request_records
from starserve.workload import WorkloadRequest

TINY_GRID = ProfileGrid((1, 4), (64, 512), (32,), 96, num_steps=5, num_warmup_steps=1)


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[HardwareProfile, Path]:
    calls: list[str] = []
    profile = run_profile(TINY_GRID, EngineSetup(dtype="float32"), calls.append)
    assert len(calls) == 1 + len(TINY_GRID.decode_points()) + len(TINY_GRID.chunk_sizes)
    path = tmp_path_factory.mktemp("profile") / "cpu.csv"
    write_profile(profile, path)
    return profile, path


def test_profile_round_trip_keeps_rows_and_the_machine(measured) -> None:
    profile, path = measured
    back = read_profile(path)
    assert back.meta == profile.meta
    assert (back.meta["cpu"], back.meta["isa"], back.meta["dtype"]) == (
        cpu().model_name,
        cpu().isa,
        "float32",
    )
    assert list(back.rows.columns) == list(COLUMNS)
    pd.testing.assert_frame_equal(
        back.rows[list(COLUMNS[:5])], profile.rows[list(COLUMNS[:5])], check_dtype=False
    )
    assert np.allclose(back.rows[MEDIAN_MS], profile.rows[MEDIAN_MS], rtol=1e-4)
    decode = back.phase("decode")
    assert sorted(decode["batch_size"].unique()) == [1, 4]
    prefill = back.phase("prefill")  # 96 tokens in chunks of 32: cached 0, 32, 64
    assert prefill["num_context_tokens"].tolist() == [0, 32, 64]
    assert (prefill["num_new_tokens"] == 32).all()


def test_latency_model_reproduces_the_measured_points(measured) -> None:
    profile, _ = measured
    model = MeasuredLatencyModel.from_profile(profile)
    decode = profile.phase("decode")
    predicted = np.array([model.decode_step_s(int(b), k) for b, k in
                          zip(decode["batch_size"], decode["num_context_tokens"], strict=True)])  # fmt: skip
    measured_s = decode[MEDIAN_MS].to_numpy() / 1000
    # one slope in K shared by both batch sizes: a busy machine's noise (CI shares its 2 cores)
    # lands in the residual; a wrong fit (e.g. K in the wrong unit) is off by far more
    assert np.median(np.abs(predicted / measured_s - 1)) < 0.25
    prefill = profile.phase("prefill")
    first = prefill[prefill["num_context_tokens"] == 0].iloc[0]
    assert model.prefill_s([(32, 0)]) == pytest.approx(first[MEDIAN_MS] / 1000, rel=1e-6)


def _synthetic_profile() -> HardwareProfile:
    """Exact t = 4 ms + 1.5 ms*B + 2 us*K and prefill 3 ms + 0.4 ms*N + 10 ns*pairs."""
    rows = []
    for b in (1, 2, 4, 8):
        for k in (100, 400, 1600):
            rows.append(("decode", b, b, k, 4, 4 + 1.5 * b + 0.002 * k, 0, 0))
    for n in (16, 64, 256):
        for c in (0, 256, 512):
            pairs = n * (c + n / 2)
            rows.append(("prefill", 1, n, c, 1, 3 + 0.4 * n + 1e-5 * pairs, 0, 0))
    meta = {key: "1" for key in ("num_threads", "num_layers", "block_size", "max_num_seqs")}
    meta["colocated_engines"] = "0"
    meta |= {"cpu": "test", "isa": "avx2", "arch": "x86_64", "dtype": "float32", "model": "m",
             "kv_bytes_per_token": "1000", "kv_capacity_tokens": "4000",
             "max_num_batched_tokens": "512", "created_utc": "now", "load_average": "0"}  # fmt: skip
    return HardwareProfile(meta, pd.DataFrame(rows, columns=list(COLUMNS)))


def test_fit_is_exact_on_a_table_of_its_own_shape() -> None:
    model = MeasuredLatencyModel.from_profile(_synthetic_profile())
    assert model.decode_s_per_kv_token == pytest.approx(2e-6)
    for b in (1, 3, 8, 12):  # 3 interpolated, 12 extrapolated
        assert model.decode_fixed_s(b) == pytest.approx((4 + 1.5 * b) / 1000)
    two_prompts = model.prefill_s([(64, 0), (64, 256)])
    expected = 3 + 0.4 * 128 + 1e-5 * (64 * 32 + 64 * (256 + 32))
    assert two_prompts == pytest.approx(expected / 1000)


def test_simulator_on_a_profile_times_a_lone_request_by_it(tmp_path: Path) -> None:
    path = tmp_path / "synthetic.csv"
    write_profile(_synthetic_profile(), path)
    cluster = ClusterConfig(num_prefill_instances=1, num_decode_instances=1, profile=str(path),
                            prefill_token_budget=512, kv_transfer_overhead_ms=0.0)  # fmt: skip
    requests = [WorkloadRequest("a", 0.0, 100, 50)]
    sampler = make_sampler(PredictorConfig())
    sim = build_cluster(cluster, get_policy("round_robin"), requests, sampler)
    sim.run()
    model = measured_latency_model(str(path))
    assert sim.decode[0].num_total_blocks == 4000 // 16  # the profile's KV capacity
    record = request_records(sim)[0]
    assert record.ttft_s == pytest.approx(model.prefill_s([(100, 0)]))
    # 49 decode steps with one sequence whose context grows from 101 to 149 tokens
    summary = summarize([record])
    mean_kv = np.mean([model.decode_step_s(1, k) for k in range(100, 149)])
    assert summary["mean_tpot_ms"] == pytest.approx(mean_kv * 1000, rel=0.02)


def test_malformed_profiles_are_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("phase,batch_size\ndecode,1\n")
    with pytest.raises(StarserveError, match="not a starserve-hardware-profile"):
        read_profile(path)
    with pytest.raises(StarserveError, match="no such hardware profile"):
        read_profile(tmp_path / "missing.csv")
    good = tmp_path / "good.csv"
    write_profile(_synthetic_profile(), good)
    good.write_text(good.read_text().replace("# kv_bytes_per_token: 1000\n", ""))
    with pytest.raises(StarserveError, match="header lacks kv_bytes_per_token"):
        read_profile(good)


def test_cli_bad_flag_is_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "starserve", "profile", "--batch-sizes", "1,x"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --batch-sizes must be comma-separated integers, got '1,x'"
    ]


SCENARIO = """
name: tiny-cpu
cluster: {num_prefill_instances: 1, num_decode_instances: 2, prefill_token_budget: 512}
workload: {name: PLACEHOLDER, arrival: poisson, rate_per_s: 2.0}
slos: {ttft_ms: 3000, tpot_ms: 200}
policies: [round_robin]
"""


def test_simulate_cli_runs_on_a_profile_and_rejects_a_bad_one(tmp_path: Path) -> None:
    profile = tmp_path / "cpu.csv"
    write_profile(_synthetic_profile(), profile)
    trace = tmp_path / "trace.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,100,40\n0.5,60,20\n")
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(SCENARIO.replace("PLACEHOLDER", str(trace)))
    base = [sys.executable, "-m", "starserve", "simulate", str(scenario), "--trace", str(trace),
            "--no-rate-search", "--out"]  # fmt: skip
    ok = subprocess.run([*base, str(tmp_path / "out"), "--profile", str(profile)],
                        capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    results = (tmp_path / "out" / "results.json").read_text()
    assert '"round_robin"' in results
    bad = tmp_path / "bad.csv"
    bad.write_text("nothing\n")
    failed = subprocess.run([*base, str(tmp_path / "out2"), "--profile", str(bad)],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines() == [
        f"error: {bad}: not a starserve-hardware-profile version 1 file"
    ]
