"""Does the simulator predict the real cluster? The same workload on both, side by side.

1. `starserve profile` (in process) measures this machine's engine steps over a grid sized to
   the workload (or `--profile FILE` reuses one).
2. The cluster_skew workload (real prompts: AlpacaEval chat + MATH-500, fixed seed) runs on
   the real cluster, 1 prefill + 2 decode Ray instances, once per policy (bench/cluster_skew.py's
   own code: launch, warm up, `starserve bench` subprocess, /v1/cluster/stats).
3. The simulator, on that profile, gets the very same requests: the arrival times
   `starserve bench` used (same seed and rate), the prompt tokens the server counted and each
   request's actual output length in that run; the same KV blocks, block size, batch cap,
   prefill budget and poll interval. STAR's predictions come from the shipped predictor's
   measured error profile (the live cluster runs that predictor).

Printed per policy: measured and simulated mean/P99 TPOT, mean TTFT, preemptions, migrations,
relative errors; `--out` gets tpot_cdf_sim_vs_real.png (both CDFs per policy).
Run from the project root:  python bench/sim_vs_real.py [--quick] [--profile FILE]
Last line: RESULT {json} with mean_tpot_rel_error, p99_tpot_rel_error, ttft_rel_error (worst
over the policies), policy_order_agrees (same ranking by P99 TPOT), cpu/isa/dtype.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

import cluster_skew  # noqa: E402  (its workload and real-cluster driver, reused as is)

from starserve.cli.bench import load_requests  # noqa: E402
from starserve.cluster.config import ClusterConfig as RealClusterConfig  # noqa: E402
from starserve.hardware import result_tags  # noqa: E402
from starserve.metrics import summarize  # noqa: E402
from starserve.paths import cache_dir  # noqa: E402
from starserve.profile.measure import EngineSetup, ProfileGrid, run_profile  # noqa: E402
from starserve.profile.table import write_profile  # noqa: E402
from starserve.sim.config import ClusterConfig, PredictorConfig, Scenario, SloConfig  # noqa: E402
from starserve.sim.run import simulate  # noqa: E402
from starserve.workload import WorkloadRequest  # noqa: E402

POLICIES = "round_robin,least_current_load,llumnix,star"
METRICS = ("mean_tpot_ms", "p99_tpot_ms", "mean_ttft_ms")


def profile_grid(args: argparse.Namespace) -> ProfileGrid:
    """Batch sizes and contexts a decode instance of this run can reach (its KV blocks)."""
    max_tokens = args.kv_blocks * 16
    if args.quick:
        return ProfileGrid((1, 4, 12), (128, max_tokens), (64, 256), 512, 4, 1)
    contexts = tuple(sorted({128, max_tokens // 2, max_tokens}))
    return ProfileGrid((1, 2, 4, 8, 16), contexts, (32, 64, 128, 256, 512), 512, 8, 2)


def measure_profile(args: argparse.Namespace, out_dir: Path) -> Path:
    from tqdm import tqdm

    grid = profile_grid(args)
    path = out_dir / "profile.csv"
    with tqdm(desc="profile", unit="point") as bar:
        profile = run_profile(
            grid, EngineSetup(dtype=args.dtype), lambda _m: bar.update(1), args.colocated
        )
    write_profile(profile, path)
    return path


def real_runs(args: argparse.Namespace, policies: list[str], out_dir: Path) -> dict[str, Any]:
    """Each policy on the real cluster (cluster_skew's launch / warm-up / run_policy)."""
    workload = cluster_skew.workload_path(out_dir, args.seed)
    cluster_skew.build_workload(workload, args.num_prompts, args.long_fraction,
                                args.short_cap, args.long_cap, args.seed)  # fmt: skip
    config = RealClusterConfig(num_prefill=1, num_decode=2, policy=policies[0], dtype=args.dtype,
                               engine={"num_kv_blocks": args.kv_blocks})  # fmt: skip
    cluster = cluster_skew.launch_cluster(config)
    runs = {}
    try:
        cluster_skew.warm_up(cluster, workload, out_dir)
        for policy in policies:
            cluster = cluster_skew.switch_policy(cluster, policy)
            run = cluster_skew.run_policy(cluster, policy, args, args.seed, out_dir)
            run["bench"] = json.loads(
                (out_dir / f"bench_{policy}_seed{args.seed}.json").read_text()
            )
            runs[policy] = run
    finally:
        cluster.shutdown()
    return runs


def sim_requests(args: argparse.Namespace, out_dir: Path, bench: dict[str, Any]) -> list:
    """The requests exactly as `starserve bench` sent them, with the run's real token counts."""
    workload = cluster_skew.workload_path(out_dir, args.seed)
    sent = load_requests(str(workload), args.num_prompts, args.request_rate, 1.0, args.seed)
    rows = zip(sent, bench["input_lens"], bench["output_lens"], bench["errors"], strict=True)
    return [
        WorkloadRequest(r.request_id, r.arrival_time_s, int(prompt), int(output))
        for r, prompt, output, error in rows
        if not error and output >= 1
    ]


def scenario(args: argparse.Namespace, profile: Path) -> Scenario:
    """The simulated twin of the real cluster's settings (engine and controller defaults)."""
    cluster = ClusterConfig(
        num_prefill_instances=1, num_decode_instances=2, profile=str(profile),
        kv_capacity_tokens=args.kv_blocks * 16, block_size=16, max_num_seqs=64,
        prefill_token_budget=1024, watermark_fraction=0.0,  # the engine admits to the last block
        kv_transfer_overhead_ms=args.transfer_overhead_ms,
        kv_transfer_bandwidth_gb_per_s=args.transfer_gb_per_s,
        migration_bandwidth_gb_per_s=args.transfer_gb_per_s,
        migration_overhead_ms=args.transfer_overhead_ms, migration_max_stages=3,
        migration_final_stage_max_blocks=16, poll_interval_s=0.05,
    )  # fmt: skip
    return Scenario(
        name="sim_vs_real", cluster=cluster, slos=SloConfig(ttft_ms=10_000, tpot_ms=1000),
        predictor=PredictorConfig(kind="error_profile"),
    )  # fmt: skip


def rel_error(sim: float, real: float) -> float:
    return abs(sim - real) / real if real else float("inf")


def compare(real: dict[str, Any], sim: Any) -> dict[str, Any]:
    records = real["records"]
    real_summary = summarize(records)
    row: dict[str, Any] = {"real": {k: real_summary[k] for k in METRICS},
                           "sim": {k: sim.summary[k] for k in METRICS}}  # fmt: skip
    row["real"]["preemptions"] = real["preemptions"]
    row["real"]["migrations"] = real["migrations_by_status"].get("finished", 0)
    row["sim"]["preemptions"] = sim.counters["preemptions"]
    row["sim"]["migrations"] = sim.counters["migrations"]
    row["rel_error"] = {k: round(rel_error(sim.summary[k], real_summary[k]), 3) for k in METRICS}
    return row


def plot_cdfs(runs: dict[str, Any], sims: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.5), squeeze=False)
    for ax, policy in zip(axes[0], runs, strict=True):
        for label, records in (("real", runs[policy]["records"]), ("sim", sims[policy].records)):
            tpots = np.sort([1000 * t for r in records if (t := r.tpot_s) is not None])
            ax.plot(tpots, np.arange(1, len(tpots) + 1) / max(1, len(tpots)), label=label)
        ax.set_title(policy)
        ax.set_xlabel("TPOT (ms)")
    axes[0][0].set_ylabel("fraction of requests")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(rows: dict[str, Any]) -> None:
    print(f"{'policy':>20} | {'mean TPOT real/sim ms':>22} | {'P99 TPOT real/sim ms':>22} | "
          f"{'mean TTFT real/sim ms':>22} | preempt r/s | migr r/s")  # fmt: skip
    for policy, row in rows.items():
        r, s, e = row["real"], row["sim"], row["rel_error"]
        cells = [f"{r[k]:8.1f}/{s[k]:8.1f} ({e[k]:4.0%})" for k in METRICS]
        print(f"{policy:>20} | " + " | ".join(cells) +
              f" | {r['preemptions']:4d}/{s['preemptions']:<4d} | "
              f"{r['migrations']:3d}/{s['migrations']:<3d}")  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add(
        "--quick",
        action="store_true",
        help="a real but short run: 8 requests, long cap 48, round_robin and star, small profile",
    )
    add(
        "--policies",
        default=None,
        help=f"comma-separated policies (default {POLICIES}; --quick: round_robin,star)",
    )
    add("--num-prompts", type=int, default=80, help="requests per policy")
    add("--request-rate", type=float, default=0.5, help="open-loop arrivals per second")
    add("--long-fraction", type=float, default=0.25, help="share of long-answer prompts")
    add("--short-cap", type=int, default=32, help="output cap of short requests")
    add("--long-cap", type=int, default=256, help="output cap of long requests")
    add("--kv-blocks", type=int, default=48, help="KV blocks per instance (16 tokens each)")
    add("--seed", type=int, default=0, help="workload and arrival seed")
    add("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="engine dtype")
    add(
        "--profile",
        type=Path,
        default=None,
        help="hardware profile to simulate on (default: measure one first)",
    )
    add(
        "--colocated",
        type=int,
        default=0,
        help="busy sibling engines while profiling (a CPU cluster's instances share the cores)",
    )
    add(
        "--transfer-overhead-ms",
        type=float,
        default=1.0,
        help="simulated fixed cost of a P->D transfer or migration",
    )
    add(
        "--transfer-gb-per-s",
        type=float,
        default=50.0,
        help="simulated bandwidth of the KV links (GB/s)",
    )
    add("--out", type=Path, default=None, help="folder for the plot and result JSON")
    add("--ignore-eos", action="store_true", help="every request generates exactly its cap")
    args = parser.parse_args()
    if args.quick:
        args.num_prompts, args.long_cap, args.request_rate = 8, 48, 2.0
        args.policies = args.policies or "round_robin,star"
    args.policies = args.policies or POLICIES
    if args.profile is not None and not args.profile.is_file():
        parser.error(f"--profile {args.profile}: no such file")
    return args


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    out_dir = args.out or cache_dir() / "sim_vs_real"
    out_dir.mkdir(parents=True, exist_ok=True)
    policies = args.policies.split(",")
    profile = args.profile or measure_profile(args, out_dir)
    runs = real_runs(args, policies, out_dir)
    sims = {p: simulate(scenario(args, profile), p, sim_requests(args, out_dir, runs[p]["bench"]))
            for p in policies}  # fmt: skip
    rows = {p: compare(runs[p], sims[p]) for p in policies}
    print_table(rows)
    plot_cdfs(runs, sims, out_dir / "tpot_cdf_sim_vs_real.png")
    real_order = sorted(policies, key=lambda p: rows[p]["real"]["p99_tpot_ms"])
    sim_order = sorted(policies, key=lambda p: rows[p]["sim"]["p99_tpot_ms"])
    worst = {k: max(rows[p]["rel_error"][k] for p in policies) for k in METRICS}
    result = {
        "mean_tpot_rel_error": worst["mean_tpot_ms"],
        "p99_tpot_rel_error": worst["p99_tpot_ms"],
        "ttft_rel_error": worst["mean_ttft_ms"],
        "policy_order_agrees": real_order == sim_order,
        "real_order_by_p99_tpot": real_order,
        "sim_order_by_p99_tpot": sim_order,
        "policies": rows,
        "profile": str(profile),
        "wall_s": round(time.perf_counter() - started, 1),
        **result_tags(args.dtype),
    }
    (out_dir / "sim_vs_real.json").write_text(json.dumps(result, indent=1))
    print(f"plot: {out_dir / 'tpot_cdf_sim_vs_real.png'}")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
