"""One controller round (dispatch + migration plan) at 256 decode instances x 64 running
requests each, on synthetic but realistic snapshots (contexts and predictions drawn from the
ServeGen reasoning lengths).

Run from the project root: `python bench/controller_round.py [--quick] [--policy NAME]`.
Prints `RESULT {"round_ms": ...}` (median over rounds).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from starserve.hardware import result_tags
from starserve.policy import InstanceSnapshot, NewRequest, RequestLoad, get_policy

BLOCK = 16
NUM_BLOCKS = 117_648 // BLOCK  # Llama-2-7B KV blocks on one H100 (docs/simulator.md)


def snapshots(rng: random.Random, num_instances: int, per_instance: int) -> list[InstanceSnapshot]:
    out = []
    for i in range(num_instances):
        requests = []
        for k in range(per_instance):
            generated = int(rng.lognormvariate(6.0, 1.2))
            context = int(rng.lognormvariate(6.5, 1.3)) + generated
            remaining = rng.lognormvariate(6.0, 1.2)
            requests.append(RequestLoad(f"r{i}-{k}", context, generated, remaining))
        used = sum(r.num_context_tokens // BLOCK + 1 for r in requests)
        total = max(NUM_BLOCKS, used + 10)
        waiting = rng.randint(0, 2)
        out.append(
            InstanceSnapshot(
                i,
                BLOCK,
                total,
                total - used,
                waiting,
                0,
                tuple(requests),
                is_migrating=rng.random() < 0.05,
                num_waiting_blocks=waiting * 40,
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--policy", default="star")
    parser.add_argument("--instances", type=int, default=256)
    parser.add_argument("--requests", type=int, default=64, help="running requests per instance")
    args = parser.parse_args()
    rng = random.Random(0)
    runner = get_policy(args.policy).bind()
    rounds = 5 if args.quick else 20
    times_ms = []
    cpu_ms = []
    migrations = 0
    for _ in range(rounds):
        snaps = snapshots(rng, args.instances, args.requests)
        request = NewRequest("new", 1500, 1200.0)
        start, start_cpu = time.perf_counter(), time.process_time()
        runner.dispatch(snaps, request)
        migrations += len(runner.plan_migrations(snaps))
        times_ms.append(1000 * (time.perf_counter() - start))
        cpu_ms.append(1000 * (time.process_time() - start_cpu))
    result = {
        "round_ms": statistics.median(times_ms),
        "max_round_ms": max(times_ms),
        "round_cpu_ms": statistics.median(cpu_ms),  # CPU time: less distorted by contention
        "policy": args.policy,
        "instances": args.instances,
        "requests_per_instance": args.requests,
        "rounds": rounds,
        "migrations_per_round": migrations / rounds,
    }
    print("RESULT " + json.dumps({**result, **result_tags("none (no model: policy code)")}))


if __name__ == "__main__":
    main()
