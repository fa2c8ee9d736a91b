"""Failover: SIGKILL a decode instance at a random point of a streamed workload.

One cluster (1 prefill + 2 decode on Ray, real engines) behind the HTTP server. Each trial
streams the same 20 greedy chat requests twice: once undisturbed (the reference), once while
one decode instance, chosen at random, is SIGKILLed when a random share (10-70 %) of the
workload's tokens has arrived. The controller sees the death when the process's liveness
connection closes, and the lost requests resume on the survivor from their kept prefill
hand-off KV (or by token replay: `--failover-kv-tokens 0`; see docs/serving.md, "Failures");
the killed instance restarts and must rejoin before the next trial.

Per trial and in total: `completed` requests (finished, no error event), `lost_tokens` and
`duplicated_tokens` (token events short of / beyond the reference's), `mismatched_outputs`
(text differs from the undisturbed run), `max_stall_ms` (the largest inter-token gap that
ends after the kill, over the requests the victim held when it was killed: what a
failed-over request waited), `rejoin_s` (kill to
the restarted instance answering its warm-up step; not waited for with --quick). Control:
`mismatched_outputs_undisturbed` counts texts that differ between two undisturbed runs (0 in
float32; bfloat16 rounding depends on the batch, so greedy text is not exactly repeatable).

Run from the project root:  python bench/failover.py [--quick] [--seed 0] [--trials 3]
Last line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # this checkout's starserve, wherever it is run from

from starserve.cluster.config import ClusterConfig  # noqa: E402
from starserve.hardware import result_tags  # noqa: E402
from starserve.paths import data_dir  # noqa: E402
from starserve.server.app import ServerSettings  # noqa: E402
from starserve.server.run import Listener, default_model_name, serving  # noqa: E402

NUM_REQUESTS = 20
REJOIN_LIMIT_S = 180.0  # a killed instance not back by then ends the bench (its trials count)


@dataclass(slots=True)
class Stream:
    text: str = ""
    times_s: list[float] = field(default_factory=list)  # one per token event
    finish_reason: str | None = None
    error: str | None = None
    request_id: str | None = None  # the server's id (the events' "id")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stream_one(url: str, model: str, prompt: str, max_tokens: int, out: Stream) -> None:
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}  # fmt: skip
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as resp:
            for line in resp.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    out.error = event["error"]["message"]
                    continue
                out.request_id = event.get("id", out.request_id)
                choice = event["choices"][0]
                content = choice["delta"].get("content")
                if content is not None and "role" not in choice["delta"]:
                    out.times_s.append(time.monotonic())
                    out.text += content
                out.finish_reason = choice["finish_reason"] or out.finish_reason
    except Exception as err:  # counted as not completed
        out.error = repr(err)


def run_workload(
    url: str, model: str, prompts: list[str], max_tokens: int, kill: Any = None
) -> list[Stream]:
    """All prompts at once; `kill(streams)` runs in its own thread beside them."""
    streams = [Stream() for _ in prompts]
    threads = [
        threading.Thread(target=stream_one, args=(url, model, p, max_tokens, s))
        for p, s in zip(prompts, streams, strict=True)
    ]
    killer = threading.Thread(target=kill, args=(streams,)) if kill else None
    for thread in [*threads, *([killer] if killer else [])]:
        thread.start()
    for thread in [*threads, *([killer] if killer else [])]:
        thread.join()
    return streams


def up(url: str, instance_id: int) -> bool:
    import httpx

    wanted = f'starserve_instance_up{{instance="{instance_id}",role="decode"}} 1.0'
    return wanted in httpx.get(f"{url}/metrics").text


def trial(args: argparse.Namespace, cluster: Any, url: str, model: str, rng: random.Random,
          prompts: list[str], reference: list[Stream]) -> dict[str, Any]:  # fmt: skip
    import ray

    victim = rng.choice(cluster.decode)
    pid = ray.get(victim.actor.pid.remote())
    total = sum(len(s.times_s) for s in reference)
    threshold = int(total * rng.uniform(0.1, 0.7))
    killed_at: list[float] = []
    on_victim: set[str] = set()

    def kill(streams: list[Stream]) -> None:
        while sum(len(s.times_s) for s in streams) < threshold:
            time.sleep(0.002)
        snapshot = ray.get(victim.actor.poll.remote()).snapshot  # what the kill takes down
        on_victim.update(load.request_id for load in (*snapshot.requests, *snapshot.incoming))
        killed_at.append(time.monotonic())
        os.kill(pid, signal.SIGKILL)

    got = run_workload(url, model, prompts, args.max_tokens, kill)
    kill_s = killed_at[0]
    failed_over = [s for s in got if s.request_id in on_victim]
    stalls = [  # every gap that ends after the kill: tokens already in flight at the kill
        b - a for s in failed_over for a, b in zip(s.times_s, s.times_s[1:], strict=False)
        if b > kill_s  # arrive just after it, so the failover's gap can come a token later
    ]  # fmt: skip
    rejoin_s = None
    if not args.quick:  # the next trial needs both decode instances again
        while not up(url, victim.instance_id) and time.monotonic() - kill_s < REJOIN_LIMIT_S:
            time.sleep(0.2)
        if up(url, victim.instance_id):
            rejoin_s = round(time.monotonic() - kill_s, 2)
    return {
        "killed_instance": victim.instance_id,
        "killed_after_tokens": threshold,
        "failed_over": len(failed_over),
        "completed": sum(1 for s in got if s.error is None and s.finish_reason is not None),
        "lost_tokens": sum(max(0, len(r.times_s) - len(s.times_s)) for r, s in zip(reference, got, strict=True)),
        "duplicated_tokens": sum(max(0, len(s.times_s) - len(r.times_s)) for r, s in zip(reference, got, strict=True)),
        "mismatched_outputs": sum(1 for r, s in zip(reference, got, strict=True) if r.text != s.text),
        "max_stall_ms": round(1000 * max(stalls, default=0.0), 1),
        "rejoin_s": rejoin_s,
        "errors": [s.error for s in got if s.error is not None][:3],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 trial, 16-token answers, no wait for the rejoin"
    )
    parser.add_argument("--seed", type=int, default=0, help="draws prompts, victims, kill points")
    parser.add_argument("--trials", type=int, default=3, help="kills (one per trial)")
    parser.add_argument("--max-tokens", type=int, default=64, help="answer length (ignore_eos)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="engine dtype of every instance")  # fmt: skip
    parser.add_argument(
        "--failover-kv-tokens", type=int, default=ClusterConfig().failover_kv_tokens,
        help="hand-off KV the controller keeps for failover (context tokens; 0 = off: lost "
        "requests re-prefill prompt + output)",
    )  # fmt: skip
    parser.add_argument(
        "--no-liveness", action="store_true",
        help="detect the death through Ray only (no liveness connections: the old behaviour)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.trials, args.max_tokens = 1, 16
    if args.trials < 1 or args.max_tokens < 2:
        parser.error("--trials must be >= 1 and --max-tokens >= 2")
    rng = random.Random(args.seed)
    lines = (data_dir() / "prompts/alpaca_eval_chat.jsonl").open().read().splitlines()
    prompts = [json.loads(line)["prompt"][:400] for line in rng.sample(lines, NUM_REQUESTS)]

    import ray

    from starserve.cluster.launch import launch_cluster

    config = ClusterConfig(num_prefill=1, num_decode=2, policy="round_robin", dtype=args.dtype,
                           engine={"num_kv_blocks": 256}, instance_max_restarts=10,
                           failover_kv_tokens=args.failover_kv_tokens,
                           liveness_connections=not args.no_liveness)  # fmt: skip
    model, port = default_model_name(None), free_port()
    cluster = launch_cluster(config)
    url = f"http://127.0.0.1:{port}"
    trials = []
    try:
        ray.get(cluster.controller.set_auto_migrate.remote(False))  # failover alone
        with serving(cluster, [Listener(ServerSettings(model), "127.0.0.1", port)]):
            reference = run_workload(url, model, prompts, args.max_tokens)
            if any(s.error or len(s.times_s) != args.max_tokens for s in reference):
                raise SystemExit("error: the undisturbed reference run did not complete")
            # control: how many greedy texts differ between two undisturbed runs (batch
            # composition changes the rounding of bfloat16 products; float32 should give 0)
            repeat = run_workload(url, model, prompts, args.max_tokens)
            undisturbed = sum(1 for r, s in zip(reference, repeat, strict=True) if r.text != s.text)
            for index in range(args.trials):
                trials.append(trial(args, cluster, url, model, rng, prompts, reference))
                print(f"trial {index + 1}/{args.trials}: {json.dumps(trials[-1])}", flush=True)
                if not args.quick and trials[-1]["rejoin_s"] is None:
                    print("the killed instance did not rejoin: no further trials", flush=True)
                    break
    finally:
        cluster.shutdown()
    result = {
        "requests": NUM_REQUESTS * len(trials),
        "completed": sum(t["completed"] for t in trials),
        "lost_tokens": sum(t["lost_tokens"] for t in trials),
        "duplicated_tokens": sum(t["duplicated_tokens"] for t in trials),
        "mismatched_outputs": sum(t["mismatched_outputs"] for t in trials),
        "mismatched_outputs_undisturbed": undisturbed,
        "max_stall_ms": max(t["max_stall_ms"] for t in trials),
        "max_rejoin_s": max((t["rejoin_s"] for t in trials if t["rejoin_s"]), default=None),
        "trials": len(trials),
        "rejoined": sum(1 for t in trials if t["rejoin_s"] is not None),
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "failover_kv_tokens": args.failover_kv_tokens,
        "liveness_connections": not args.no_liveness,
        **result_tags(args.dtype),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
