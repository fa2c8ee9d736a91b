"""The headline comparison on scenarios/reasoning-h100.yaml: every policy's P99 TPOT at the
scenario's rate and its max rate at >= 90% SLO attainment, and STAR's ratios to the others.

Run from the project root: `python bench/sim_headline.py [--quick]`.
Prints `RESULT {...}` with `star_p99_tpot_vs_round_robin`, `star_max_rate_vs_round_robin`,
`star_max_rate_vs_llumnix`, `star_max_rate_vs_oracle` and each policy's numbers.
"""

from __future__ import annotations

import argparse
import json
import time

from starserve.config import load_yaml
from starserve.hardware import result_tags
from starserve.sim.config import Scenario
from starserve.sim.experiment import run_experiment

POLICIES = ["round_robin", "least_current_load", "llumnix", "star", "oracle"]


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def predictor_override(text: str) -> dict[str, object]:
    """`--predictor`: 'error_profile', or a relative-noise std >= 0."""
    if text == "error_profile":
        return {"kind": "error_profile"}
    try:
        sigma = float(text)
    except ValueError:
        sigma = -1.0
    if not sigma >= 0:
        raise argparse.ArgumentTypeError(f"expected 'error_profile' or a std >= 0, got {text!r}")
    return {"kind": "relative_noise", "relative_noise": sigma}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="600 requests, coarse search (< 1 min)"
    )
    parser.add_argument("--scenario", default="scenarios/reasoning-h100.yaml")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument(
        "--predictor",
        type=predictor_override,
        default=None,
        help="override the scenario's predictor model: 'error_profile' (the shipped measured "
        "profile) or a number (relative_noise with that std of ln(pred/true))",
    )
    args = parser.parse_args()
    scenario = load_yaml(Scenario, args.scenario)
    if args.predictor is not None:
        scenario = scenario.model_copy(
            update={"predictor": scenario.predictor.model_copy(update=args.predictor)}
        )
    if args.quick:
        workload = scenario.workload.model_copy(update={"num_requests": 600})
        search = scenario.rate_search.model_copy(update={"num_requests": 600, "rel_tol": 0.15})
        scenario = scenario.model_copy(update={"workload": workload, "rate_search": search})
    start = time.perf_counter()
    results, _ = run_experiment(scenario, args.policies.split(","))
    wall_s = time.perf_counter() - start
    p = results["policies"]
    out: dict[str, object] = {
        "scenario": scenario.name,
        "predictor": scenario.predictor.model_dump(),
        "wall_s": wall_s,
        "quick": args.quick,
    }
    for name, entry in p.items():
        out[name] = {
            k: entry[k]
            for k in (
                "p99_tpot_ms",
                "slo_attainment",
                "max_rate_at_90pct_slo",
                "preemptions",
                "migrations",
            )
        }
    if "star" in p:
        star = p["star"]
        get = lambda n, k: p[n][k] if n in p else None  # noqa: E731
        out["star_p99_tpot_vs_round_robin"] = ratio(
            star["p99_tpot_ms"], get("round_robin", "p99_tpot_ms")
        )
        for other in ("round_robin", "llumnix", "oracle"):
            out[f"star_max_rate_vs_{other}"] = ratio(
                star["max_rate_at_90pct_slo"], get(other, "max_rate_at_90pct_slo")
            )
    print("RESULT " + json.dumps({**out, **result_tags("none (simulator)")}))


if __name__ == "__main__":
    main()
