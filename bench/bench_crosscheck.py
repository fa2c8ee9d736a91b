"""Is `starserve bench` right? The same load measured by a third-party client, GuideLLM.

`starserve serve` (1 prefill + 2 decode instances, real Ray) is started once. The same
prompts (AlpacaEval chat instructions, fixed seed), the same open-loop arrival times (the ones
`starserve bench` draws for --seed and --request-rate; GuideLLM replays them with its `replay`
profile and a `relative_timestamp` column) and the same output caps (both clients ask for
ignore_eos, so every request generates exactly its cap) go through both clients, alternating
`--rounds` times, on the chat endpoint. Compared, averaged over the rounds:
  mean TTFT   first token - request start, per request;
  mean TPOT   vLLM's (E2E - TTFT) / (n - 1) per request: GuideLLM's `inter_token_latency_ms`;
  mean ITL    every inter-token gap pooled: from GuideLLM's records sum(ITL * (n - 1)) / sum(n - 1).
GuideLLM must be installed (the `bench` extra of pyproject.toml: pip install -e '.[bench]').

Run from the project root:  python bench/bench_crosscheck.py [--quick]
Last line: RESULT {json} with worst_metric_rel_diff (largest relative difference of the three).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from starserve.cli.bench import load_requests  # noqa: E402
from starserve.hardware import result_tags  # noqa: E402
from starserve.paths import cache_dir, data_dir  # noqa: E402

METRICS = ("mean_ttft_ms", "mean_tpot_ms", "mean_itl_ms")
ENDPOINT = "/v1/chat/completions"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def write_workloads(out_dir: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """The starserve prompt file, and GuideLLM's copy of what `starserve bench` sends from it:
    same prompts, caps and arrival offsets, in sending order."""
    import random

    rng = random.Random(args.seed)
    chat = [json.loads(line)["prompt"]
            for line in (data_dir() / "prompts/alpaca_eval_chat.jsonl").open()]  # fmt: skip
    ours = out_dir / "prompts.jsonl"
    caps = (args.short_cap, args.long_cap)
    rows = [{"id": f"q{i}", "prompt": rng.choice(chat), "num_output_tokens": rng.choice(caps)}
            for i in range(args.num_prompts)]  # fmt: skip
    ours.write_text("".join(json.dumps(row) + "\n" for row in rows))
    sent = load_requests(str(ours), args.num_prompts, args.request_rate, 1.0, args.seed)
    theirs = out_dir / "guidellm_prompts.jsonl"
    theirs.write_text("".join(
        json.dumps({"prompt": r.prompt, "output_tokens_count": r.num_output_tokens,
                    "relative_timestamp": round(r.arrival_time_s, 6)}) + "\n" for r in sent
    ))  # fmt: skip
    return ours, theirs


def start_server(port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "starserve", "serve", "--port", str(port),
               "--policy", args.policy]  # fmt: skip
    log = (cache_dir() / "bench_crosscheck" / "serve.log").open("wb")
    server = subprocess.Popen(command, cwd=REPO_ROOT, env=env(), stdout=log, stderr=log,
                              start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"starserve serve exited with {server.returncode}; see {log.name}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return server
        except OSError:
            time.sleep(1)
    stop_server(server)
    raise SystemExit("starserve serve did not come up within 300 s")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """SIGINT to the server's own process group (it shuts its Ray down), then wait."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def client_run(command: list[str], **kwargs: Any) -> float:
    """Run a client to completion; the CPU seconds it used (on this 2-core machine the
    client's own CPU is taken from the server it measures)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, check=True, **kwargs)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_starserve(base_url: str, prompts: Path, args: argparse.Namespace, out: Path,
                  num: int | None = None) -> dict[str, Any]:  # fmt: skip
    command = [sys.executable, "-m", "starserve", "bench", "--base-url", base_url,
               "--dataset", str(prompts), "--num-prompts", str(num or args.num_prompts),
               "--request-rate", str(args.request_rate), "--seed", str(args.seed),
               "--endpoint", ENDPOINT, "--ignore-eos", "--save-result", str(out)]  # fmt: skip
    cpu_s = client_run(command, cwd=REPO_ROOT, env=env(), stdout=subprocess.DEVNULL)
    bench = json.loads(out.read_text())
    if bench["failed"]:
        raise SystemExit(f"starserve bench: {bench['failed']} requests failed")
    return {k: bench[k] for k in METRICS} | {"mean_prompt_tokens": _mean(bench["input_lens"]),
                                             "mean_output_tokens": _mean(bench["output_lens"]),
                                             "client_cpu_s": round(cpu_s, 2)}  # fmt: skip


def run_guidellm(base_url: str, model: str, prompts: Path, args: argparse.Namespace,
                 out: Path) -> dict[str, Any]:  # fmt: skip
    exe = shutil.which("guidellm") or str(Path(sys.executable).with_name("guidellm"))
    command = [exe, "run",
               "--backend", f"kind=openai_http,target={base_url},model={model},"
               f"request_format={ENDPOINT}",
               "--profile", "kind=replay,schedule_turn=timestamp",
               "--data", f"kind=json_file,path={prompts}",
               "--constraint", f"kind=max_requests,count={args.num_prompts}",
               "--output", f"kind=json,path={out}", "--disable-console"]  # fmt: skip
    # two client processes, not GuideLLM's default ten: this 2-core machine runs the server too
    workers = {"GUIDELLM__MAX_WORKER_PROCESSES": str(args.client_processes)}
    cpu_s = client_run(command, cwd=out.parent, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env={**os.environ, **workers})  # fmt: skip
    benchmark = json.loads(out.read_text())["benchmarks"][0]
    requests = benchmark["requests"]
    if requests["errored"] or requests["incomplete"]:
        first = (requests["errored"] or requests["incomplete"])[0]["info"]["error"]
        raise SystemExit(f"guidellm: {len(requests['errored'])} errored requests: {first[:300]}")
    done = requests["successful"]
    decoding = [r for r in done if r["output_tokens"] > 1]
    gaps = sum(r["output_tokens"] - 1 for r in decoding)
    return {
        "mean_ttft_ms": _mean([r["time_to_first_token_ms"] for r in done]),
        "mean_tpot_ms": _mean([r["inter_token_latency_ms"] for r in decoding]),
        "mean_itl_ms": sum(r["inter_token_latency_ms"] * (r["output_tokens"] - 1) for r in decoding)
        / gaps,  # fmt: skip
        "mean_prompt_tokens": _mean([r["prompt_tokens"] for r in done]),
        "mean_output_tokens": _mean([r["output_tokens"] for r in done]),
        # how late GuideLLM sent requests against the replayed schedule (its own timings)
        "mean_send_lag_ms": 1000
        * _mean(
            [
                r["info"]["timings"]["request_start"] - r["info"]["timings"]["targeted_start"]
                for r in done
            ]
        ),
        "client_cpu_s": round(cpu_s, 2),
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def averaged(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {k: round(_mean([run[k] for run in runs]), 2) for k in runs[0]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add(
        "--quick",
        action="store_true",
        help="a real but short run: 8 requests, one round (< 1 min "
        "of load; starting the server and GuideLLM's workers adds ~40 s)",
    )
    add("--num-prompts", type=int, default=40, help="requests per client per round")
    add("--request-rate", type=float, default=1.0, help="open-loop arrivals per second")
    add("--short-cap", type=int, default=32, help="output tokens of half the requests")
    add("--long-cap", type=int, default=96, help="output tokens of the other half")
    add("--rounds", type=int, default=2, help="alternating rounds of both clients")
    add("--policy", default="round_robin", help="the server's policy")
    add("--client-processes", type=int, default=2, help="GuideLLM worker processes")
    add("--seed", type=int, default=0, help="prompt and arrival seed")
    args = parser.parse_args()
    if args.quick:
        args.num_prompts, args.rounds, args.long_cap = 8, 1, 48
    if args.num_prompts < 2 or args.rounds < 1 or args.request_rate <= 0:
        parser.error("--num-prompts >= 2, --rounds >= 1 and --request-rate > 0 are required")
    return args


def main() -> None:
    args = parse_args()
    out_dir = cache_dir() / "bench_crosscheck"
    out_dir.mkdir(parents=True, exist_ok=True)
    ours, theirs = write_workloads(out_dir, args)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = start_server(port, args)
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(f"{base_url}/v1/models") as response:
            model = json.load(response)["data"][0]["id"]
        run_starserve(base_url, ours, args, out_dir / "warmup.json", num=4)
        runs: dict[str, list[dict[str, Any]]] = {"starserve_bench": [], "guidellm": []}
        for i in range(args.rounds):
            print(f"round {i + 1}/{args.rounds}: starserve bench, then guidellm", flush=True)
            runs["starserve_bench"].append(
                run_starserve(base_url, ours, args, out_dir / f"starserve_{i}.json")
            )
            runs["guidellm"].append(
                run_guidellm(base_url, model, theirs, args, out_dir / f"guidellm_{i}.json")
            )
    finally:
        stop_server(server)
    ours_avg, theirs_avg = averaged(runs["starserve_bench"]), averaged(runs["guidellm"])
    diffs = {k: round(abs(ours_avg[k] - theirs_avg[k]) / theirs_avg[k], 4) for k in METRICS}
    print(f"{'metric':>14} | {'starserve bench':>15} | {'guidellm':>10} | rel diff")
    for k in METRICS:
        print(f"{k:>14} | {ours_avg[k]:15.1f} | {theirs_avg[k]:10.1f} | {diffs[k]:.1%}")
    result = {
        "worst_metric_rel_diff": max(diffs.values()),
        "rel_diff": diffs,
        "starserve_bench": ours_avg,
        "guidellm": theirs_avg,
        "per_round": runs,
        "settings": vars(args),
        "load_wall_s": round(time.perf_counter() - started, 1),
        **result_tags("bfloat16"),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
