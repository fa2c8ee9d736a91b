"""STAR vs round_robin on a length-skewed load: 1 prefill + 2 decode instances on Ray.

For each policy this starts the real cluster and HTTP server, drives it with `starserve bench`
(a subprocess, exactly the command users run) at a fixed open-loop rate, and reads the
cluster's own counters (preemptions, migrations, migration pauses) from /v1/cluster/stats.

The workload is built from real prompts: short-answer chat instructions (AlpacaEval) mixed
with competition math problems (MATH-500) that push the model to long answers; each request's
output cap follows its kind, so short and long answers mix.

Run from the project root:  python bench/cluster_skew.py [--quick]
Last line: RESULT {json} with `p99_tpot_ratio_star_vs_round_robin`, per-policy numbers and
the migration pause against normal TPOT.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from starserve.cluster.config import ClusterConfig
from starserve.paths import cache_dir, data_dir
from starserve.server.run import ServeOptions, running_server


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


def run_policy(
    policy: str, args: argparse.Namespace, workload: Path, out_dir: Path
) -> dict[str, Any]:
    port = free_port()
    cluster = ClusterConfig(
        num_prefill=1, num_decode=2, policy=policy, engine={"num_kv_blocks": args.kv_blocks}
    )
    result_file = out_dir / f"bench_{policy}.json"
    with running_server(ServeOptions(cluster=cluster, port=port)):
        base_url = f"http://127.0.0.1:{port}"
        command = [
            sys.executable, "-m", "starserve", "bench", "--base-url", base_url,
            "--dataset", str(workload), "--num-prompts", str(args.num_prompts),
            "--request-rate", str(args.request_rate), "--seed", str(args.seed),
            "--save-result", str(result_file),
        ]  # fmt: skip
        print(f"[{policy}] {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        subprocess.run(command, check=True)
        with urllib.request.urlopen(f"{base_url}/v1/cluster/stats") as response:
            stats = json.load(response)
    bench = json.loads(result_file.read_text())
    return {
        "wall_s": round(time.perf_counter() - started, 1),
        "completed": bench["completed"],
        "failed": bench["failed"],
        "p99_tpot_ms": bench["p99_tpot_ms"],
        "mean_tpot_ms": bench["mean_tpot_ms"],
        "p99_ttft_ms": bench["p99_ttft_ms"],
        "p99_itl_ms": bench["p99_itl_ms"],
        "output_throughput": bench["output_throughput"],
        "preemptions": sum(stats["preemptions_per_instance"].values()),
        "migrations_started": stats["migrations_started"],
        "migrations_by_status": stats["migrations_by_status"],
        "migration_pauses": stats["migration_pauses"],
    }


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
        "median_engine_pause_ms": round(
            sorted(p["engine_pause_ms"] for p in done)[len(done) // 2], 1
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a real but short run (< 1 min per policy)"
    )
    parser.add_argument("--policies", default="round_robin,star", help="comma-separated policies")
    parser.add_argument("--num-prompts", type=int, default=120, help="requests per policy")
    parser.add_argument(
        "--request-rate", type=float, default=2.0, help="open-loop arrivals per second"
    )
    parser.add_argument(
        "--long-fraction", type=float, default=0.25, help="share of long-answer prompts"
    )
    parser.add_argument("--short-cap", type=int, default=32, help="output cap of short requests")
    parser.add_argument("--long-cap", type=int, default=384, help="output cap of long requests")
    parser.add_argument(
        "--kv-blocks", type=int, default=96, help="KV blocks per instance (16 tokens each)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.num_prompts, args.long_cap = 24, 128
    out_dir = cache_dir() / "cluster_skew"
    out_dir.mkdir(parents=True, exist_ok=True)
    workload = out_dir / f"workload_seed{args.seed}.jsonl"
    build_workload(
        workload, args.num_prompts, args.long_fraction, args.short_cap, args.long_cap, args.seed
    )
    per_policy = {p: run_policy(p, args, workload, out_dir) for p in args.policies.split(",")}
    result: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items()},
        "policies": {
            p: {k: v for k, v in r.items() if k != "migration_pauses"}
            for p, r in per_policy.items()
        },
    }
    if "star" in per_policy and "round_robin" in per_policy:
        ratio = per_policy["star"]["p99_tpot_ms"] / per_policy["round_robin"]["p99_tpot_ms"]
        result["p99_tpot_ratio_star_vs_round_robin"] = round(ratio, 3)
    pauses = [p for r in per_policy.values() for p in r["migration_pauses"]]
    result["migration_pause"] = pause_summary(pauses)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
