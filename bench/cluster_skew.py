"""STAR vs the decode policies users run on a length-skewed load: 1 prefill + 2 decode
instances on Ray.

One cluster (real engines, models loaded once) is warmed up, then each policy gets a fresh
controller and HTTP server over the same idle instances, is driven by `starserve bench` (a
subprocess, exactly the command users run) at a fixed open-loop rate, and the cluster's own
counters (preemptions, migrations, migration pauses) are read from /v1/cluster/stats.

The workload is built from real prompts: short-answer chat instructions (AlpacaEval) mixed
with competition math problems (MATH-500) that push the model to long answers; each request's
output cap follows its kind, so short and long answers mix. Requests go to
/v1/chat/completions (`starserve bench --endpoint`): SmolLM2 is an instruct model, and on raw
completions it ends most answers at once with EOS, which leaves no length skew at all.

With several seeds (`--seed 0,1,2`) each seed draws its own workload and arrival times, every
policy runs every seed, and the P99 TPOT is taken over all of a policy's requests pooled (the
P99 of 80 requests is nearly their maximum, which swings with a single preemption).

Run from the project root:  python bench/cluster_skew.py [--quick] [--seed 0,1,2]
The default policies are round_robin, least_current_load, llumnix, llumnix_v1 and star; the
default rate is `--load-fraction` (0.6) of the capacity measured on the machine at hand (a
burst of requests under round robin), printed and recorded in the RESULT line.
Last line: RESULT {json} with `p99_tpot_ratio_star_vs_best_other` (pooled over the seeds),
`p99_tpot_ratio_star_vs_least_current_load_per_seed`, `capacity_rps`, `request_rate`,
per-policy and per-seed numbers and the migration pause against normal TPOT.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # this checkout's starserve, wherever it is run from

from starserve.cluster.config import ClusterConfig  # noqa: E402
from starserve.cluster.launch import launch_cluster, switch_policy  # noqa: E402
from starserve.errors import StarserveError  # noqa: E402
from starserve.hardware import resolve_dtype, result_tags  # noqa: E402
from starserve.metrics.records import RequestRecord  # noqa: E402
from starserve.metrics.summary import summarize  # noqa: E402
from starserve.paths import cache_dir, data_dir  # noqa: E402
from starserve.policy import parse_policy_list  # noqa: E402
from starserve.server.app import ServerSettings  # noqa: E402
from starserve.server.run import Listener, default_model_name, serving  # noqa: E402

DEFAULT_POLICIES = ("round_robin", "least_current_load", "llumnix", "llumnix_v1", "star")
# Default load: 60% of the throughput a burst reaches on this machine: busy enough that
# the long answers exhaust some instance's KV under a blind policy, short of the overload
# where every policy queues (the AVX2 run at a fixed 0.5 req/s)
LOAD_FRACTION = 0.6


def build_workload(
    path: Path, num: int, long_fraction: float, short_cap: int, long_cap: int, seed: int
) -> None:
    """A JSONL prompt set: `num` prompts, `long_fraction` of them long-answer math problems."""
    rng = random.Random(seed)
    chat = [
        json.loads(line)["prompt"]
        for line in (data_dir() / "prompts/alpaca_eval_chat.jsonl").open()
    ]
    math = [json.loads(line)["problem"] for line in (data_dir() / "math/math500.jsonl").open()]
    rows = []
    for i in range(num):
        is_long = rng.random() < long_fraction
        prompt = rng.choice(math if is_long else chat)
        if is_long:
            prompt += "\nExplain every step of the solution in detail."
        rows.append({"id": f"{'long' if is_long else 'short'}-{i}", "prompt": prompt,
                     "num_output_tokens": long_cap if is_long else short_cap})  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get_stats(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base_url}/v1/cluster/stats") as response:
        result: dict[str, Any] = json.load(response)
    return result


def run_bench(
    base_url: str,
    workload: Path,
    num: int,
    rate: float,
    seed: int,
    out: Path,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """`starserve bench` in a subprocess, exactly as a user runs it; its saved result."""
    command = [
        sys.executable, "-m", "starserve", "bench", "--base-url", base_url,
        "--dataset", str(workload), "--num-prompts", str(num), "--request-rate", str(rate),
        "--seed", str(seed), "--save-result", str(out), "--endpoint", "/v1/chat/completions",
        *extra,
    ]  # fmt: skip
    print(f"$ starserve {' '.join(command[3:])}", flush=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run(command, check=True, cwd=REPO_ROOT, env=env)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def request_records(bench: dict[str, Any]) -> list[RequestRecord]:
    """The saved result's requests back as records (token times from TTFT and the ITLs), so
    pooled metrics use the same definitions as `starserve bench` itself."""
    return [
        RequestRecord(0.0, tuple(itertools.accumulate([ttft, *itls])), prompt_tokens)
        for ttft, itls, prompt_tokens, error in zip(
            bench["ttfts"], bench["itls"], bench["input_lens"], bench["errors"], strict=True
        )
        if not error
    ]


def run_policy(
    cluster: Any, policy: str, args: argparse.Namespace, seed: int, out_dir: Path
) -> dict[str, Any]:
    """One measured run of `policy` (the cluster's controller runs it) on warm, idle instances."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    settings = ServerSettings(default_model_name(None))
    started = time.perf_counter()
    with serving(cluster, [Listener(settings, "127.0.0.1", port)]):
        before = get_stats(base_url)["preemptions_per_instance"]
        extra = ("--ignore-eos",) if args.ignore_eos else ()
        bench = run_bench(base_url, workload_path(out_dir, seed), args.num_prompts,
                          args.request_rate, seed, out_dir / f"bench_{policy}_seed{seed}.json",
                          extra)  # fmt: skip
        stats = get_stats(base_url)
    preemptions = {k: v - before.get(k, 0) for k, v in stats["preemptions_per_instance"].items()}
    return {
        "seed": seed,
        "wall_s": round(time.perf_counter() - started, 1),
        "completed": bench["completed"],
        "failed": bench["failed"],
        "p99_tpot_ms": bench["p99_tpot_ms"],
        "mean_tpot_ms": bench["mean_tpot_ms"],
        "p99_ttft_ms": bench["p99_ttft_ms"],
        "p99_itl_ms": bench["p99_itl_ms"],
        "output_throughput": bench["output_throughput"],
        "preemptions": sum(preemptions.values()),
        "migrations_started": stats["migrations_started"],
        "migrations_by_status": stats["migrations_by_status"],
        "migration_pauses": stats["migration_pauses"],
        "records": request_records(bench),
    }


def workload_path(out_dir: Path, seed: int) -> Path:
    return out_dir / f"workload_seed{seed}.jsonl"


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One policy's runs over all seeds: pooled P99 TPOT, summed counters, per-seed figures."""
    statuses = [run["migrations_by_status"] for run in runs]
    per_seed_keys = ("seed", "p99_tpot_ms", "mean_tpot_ms", "preemptions", "migrations_started")
    tpot = summarize([record for run in runs for record in run["records"]])
    return {
        "completed": sum(run["completed"] for run in runs),
        "failed": sum(run["failed"] for run in runs),
        "p99_tpot_ms": tpot["p99_tpot_ms"],
        "mean_tpot_ms": tpot["mean_tpot_ms"],
        "preemptions": sum(run["preemptions"] for run in runs),
        "migrations_started": sum(run["migrations_started"] for run in runs),
        "migrations_by_status": {k: sum(s[k] for s in statuses) for k in statuses[0]},
        "per_seed": [{k: run[k] for k in per_seed_keys} for run in runs],
    }


def warm_up(cluster: Any, workload: Path, out_dir: Path) -> None:
    """A few requests first, so that no measured policy pays for cold instances."""
    port = free_port()
    with serving(cluster, [Listener(ServerSettings(default_model_name(None)), "127.0.0.1", port)]):
        run_bench(
            f"http://127.0.0.1:{port}", workload, 6, float("inf"), 99, out_dir / "warmup.json"
        )


def measure_capacity(cluster: Any, workload: Path, num: int, out_dir: Path) -> float:
    """Requests per second the warm cluster completes when `num` of the workload's requests
    arrive at once (round robin, no migration): the machine's own saturated throughput."""
    cluster = switch_policy(cluster, "round_robin")
    port = free_port()
    with serving(cluster, [Listener(ServerSettings(default_model_name(None)), "127.0.0.1", port)]):
        bench = run_bench(
            f"http://127.0.0.1:{port}", workload, num, float("inf"), 98, out_dir / "capacity.json"
        )
    return float(bench["request_throughput"])


def ratios_vs_others(
    per_policy: dict[str, dict[str, Any]], runs: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """STAR's P99 TPOT over the best other policy's (pooled, and per seed) and over
    least_current_load's per seed."""
    out: dict[str, Any] = {}
    others = [p for p in per_policy if p != "star"]
    if "star" not in per_policy or not others:
        return out
    best = min(others, key=lambda p: per_policy[p]["p99_tpot_ms"])
    out["best_other"] = best
    out["p99_tpot_ratio_star_vs_best_other"] = round(
        per_policy["star"]["p99_tpot_ms"] / per_policy[best]["p99_tpot_ms"], 3
    )
    out["p99_tpot_ratio_star_vs_best_other_per_seed"] = [
        round(star["p99_tpot_ms"] / min(runs[p][i]["p99_tpot_ms"] for p in others), 3)
        for i, star in enumerate(runs["star"])
    ]
    for other in ("least_current_load", "round_robin"):
        if other in runs:
            out[f"p99_tpot_ratio_star_vs_{other}_per_seed"] = [
                round(star["p99_tpot_ms"] / o["p99_tpot_ms"], 3)
                for star, o in zip(runs["star"], runs[other], strict=True)
            ]
    return out


def pause_summary(pauses: list[dict[str, Any]]) -> dict[str, Any]:
    done = [p for p in pauses if p["status"] == "finished" and p["normal_tpot_ms"] > 0]
    if not done:
        return {"num_migrated_requests": 0}
    worst = max(done, key=lambda p: p["pause_ms"] / p["normal_tpot_ms"])
    ratios = sorted(p["pause_ms"] / p["normal_tpot_ms"] for p in done)
    return {
        "num_migrated_requests": len(done),
        "median_pause_over_tpot": round(ratios[len(ratios) // 2], 2),
        "max_pause_over_tpot": round(ratios[-1], 2),
        "worst_pause_ms": round(worst["pause_ms"], 1),
        "worst_normal_tpot_ms": round(worst["normal_tpot_ms"], 1),
        "worst_engine_pause_ms": round(worst["engine_pause_ms"], 1),  # of it, source paused
        "median_engine_pause_ms": round(
            sorted(p["engine_pause_ms"] for p in done)[len(done) // 2], 1
        ),
    }


def seed_list(text: str) -> list[int]:
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"seeds must be comma-separated integers: {text!r}"
        ) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a real but short run: 8 requests per policy, long cap 48 (< 1 min)",
    )
    parser.add_argument(
        "--policies", default=",".join(DEFAULT_POLICIES), help="comma-separated policies"
    )
    parser.add_argument("--num-prompts", type=int, default=80, help="requests per policy")
    parser.add_argument(
        "--request-rate",
        type=float,
        default=None,
        help="open-loop arrivals per second (default: --load-fraction of the capacity "
        "measured on this machine, so slow and fast CPUs run in the same regime)",
    )
    parser.add_argument(
        "--load-fraction",
        type=float,
        default=LOAD_FRACTION,
        help="default load as a fraction of the measured capacity (a burst of "
        "--capacity-prompts requests under round robin)",
    )
    parser.add_argument(
        "--capacity-prompts", type=int, default=24, help="requests in the capacity burst"
    )
    parser.add_argument(
        "--long-fraction", type=float, default=0.25, help="share of long-answer prompts"
    )
    parser.add_argument("--short-cap", type=int, default=32, help="output cap of short requests")
    parser.add_argument("--long-cap", type=int, default=256, help="output cap of long requests")
    parser.add_argument(
        "--kv-blocks", type=int, default=48, help="KV blocks per instance (16 tokens each)"
    )
    parser.add_argument(
        "--seed",
        type=seed_list,
        default=[0],
        help="workload/arrival seed; comma-separated seeds run every policy on each and pool "
        "the requests for the P99",
    )
    parser.add_argument(
        "--ignore-eos", action="store_true", help="every request generates exactly its cap"
    )
    args = parser.parse_args()
    if args.quick:
        args.num_prompts, args.long_cap, args.capacity_prompts = 8, 48, 8
    if not 0 < args.load_fraction <= 2:
        parser.error("--load-fraction must be in (0, 2]")
    try:
        policies = parse_policy_list(args.policies)
    except StarserveError as error:
        parser.error(str(error))
    out_dir = cache_dir() / "cluster_skew"
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds: list[int] = args.seed
    for seed in seeds:
        build_workload(
            workload_path(out_dir, seed), args.num_prompts, args.long_fraction,
            args.short_cap, args.long_cap, seed,
        )  # fmt: skip
    config = ClusterConfig(
        num_prefill=1, num_decode=2, policy=policies[0], engine={"num_kv_blocks": args.kv_blocks}
    )
    cluster = launch_cluster(config)
    try:
        warm_up(cluster, workload_path(out_dir, seeds[0]), out_dir)
        capacity_rps = None
        if args.request_rate is None:
            capacity_rps = measure_capacity(
                cluster, workload_path(out_dir, seeds[0]), args.capacity_prompts, out_dir
            )
            args.request_rate = round(args.load_fraction * capacity_rps, 3)
            print(
                f"measured capacity {capacity_rps:.3f} req/s; load {args.request_rate} req/s "
                f"({args.load_fraction:.0%})",
                flush=True,
            )
        runs: dict[str, list[dict[str, Any]]] = {policy: [] for policy in policies}
        for seed in seeds:
            for policy in policies:
                cluster = switch_policy(cluster, policy)
                runs[policy].append(run_policy(cluster, policy, args, seed, out_dir))
    finally:
        cluster.shutdown()
    per_policy = {policy: pooled(policy_runs) for policy, policy_runs in runs.items()}
    result: dict[str, Any] = {
        **result_tags(resolve_dtype(config.dtype)),
        "settings": dict(vars(args)),
        "capacity_rps": capacity_rps,
        "request_rate": args.request_rate,
        "policies": per_policy,
    }
    result.update(ratios_vs_others(per_policy, runs))
    if "star" in per_policy and "round_robin" in per_policy:
        ratio = per_policy["star"]["p99_tpot_ms"] / per_policy["round_robin"]["p99_tpot_ms"]
        result["p99_tpot_ratio_star_vs_round_robin"] = round(ratio, 3)
        result["p99_tpot_ratio_per_seed"] = [
            round(star["p99_tpot_ms"] / rr["p99_tpot_ms"], 3)
            for star, rr in zip(runs["star"], runs["round_robin"], strict=True)
        ]
    pauses = [
        p for policy_runs in runs.values() for r in policy_runs for p in r["migration_pauses"]
    ]
    result["migration_pause"] = pause_summary(pauses)
    result.update(result_tags())
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
