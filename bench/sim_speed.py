"""Simulator speed: simulated seconds per wall-clock second, 64 decode instances at saturation.

Run from the project root: `python bench/sim_speed.py [--quick] [--policy NAME]`.
Prints `RESULT {"sim_seconds_per_wall_second": ..., "sim_seconds_per_cpu_second": ...}` (the
second one is what to compare on a loaded, shared machine).
"""

from __future__ import annotations

import argparse
import json
import time

from starserve.config import load_yaml
from starserve.hardware import result_tags
from starserve.policy import get_policy
from starserve.sim.build import build_cluster, make_sampler
from starserve.sim.config import Scenario
from starserve.sim.run import scenario_requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests (< 1 min)")
    parser.add_argument("--policy", default="round_robin", help="policy to simulate")
    parser.add_argument("--decode", type=int, default=64, help="decode instances")
    parser.add_argument(
        "--rate-per-instance",
        type=float,
        default=1.6,
        help="req/s per decode instance "
        "(1.6 = the headline cluster's saturation: 8 instances lose 90%% SLO near 12-13 req/s)",
    )
    args = parser.parse_args()
    base = load_yaml(Scenario, "scenarios/reasoning-h100.yaml")
    cluster = base.cluster.model_copy(
        update={"num_decode_instances": args.decode, "num_prefill_instances": args.decode // 2}
    )
    num_requests = 3000 if args.quick else 12000
    workload = base.workload.model_copy(update={"num_requests": num_requests})
    scenario = base.model_copy(update={"cluster": cluster, "workload": workload})
    rate = args.rate_per_instance * args.decode
    requests = scenario_requests(scenario, rate)
    sim = build_cluster(
        cluster, get_policy(args.policy), requests, make_sampler(scenario.predictor)
    )
    start, start_cpu = time.perf_counter(), time.process_time()
    sim.run()
    wall_s = time.perf_counter() - start
    cpu_s = time.process_time() - start_cpu  # what a loaded, shared machine cannot inflate
    result = {
        "sim_seconds_per_wall_second": sim.now_s / wall_s,
        "simulated_s": sim.now_s,
        "sim_seconds_per_cpu_second": sim.now_s / cpu_s,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "policy": args.policy,
        "decode_instances": args.decode,
        "rate_per_s": rate,
        "num_requests": len(requests),
        "preemptions": sum(i.counters.num_preemptions for i in sim.decode),
    }
    print("RESULT " + json.dumps({**result, **result_tags("none (simulator)")}))


if __name__ == "__main__":
    main()
