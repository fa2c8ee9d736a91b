"""Every policy on every suite scenario: P99 TPOT at the scenario's rate, max rate at >= 90% SLO
attainment, preemptions and migrations in one table, and STAR's gain over the best baseline.

Run from the project root: `python bench/policy_suite.py [--quick] [--policies a,b]
[--scenarios x,y] [--trace FILE] [--out DIR] [--workers N]`.
Baselines are the policies that read no prediction (round robin, least current load, power of
two, both Llumnix); every scenario runs the predictor's measured error profile
(starserve/assets/predictor), not synthetic noise. Writes DIR/policy_suite.json and
DIR/star_gain.png; prints the table and `RESULT {...}` with
`star_min_max_rate_ratio_vs_best_baseline`, `star_best_max_rate_ratio_vs_best_baseline`,
`star_max_p99_tpot_ratio_vs_best_baseline`, `star_min_p99_tpot_ratio_vs_best_baseline`,
`oracle_min_max_rate_ratio_vs_star` and the cpu/isa tags.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from starserve.config import load_yaml
from starserve.hardware import result_tags
from starserve.policy import POLICIES, parse_policy_list
from starserve.sim.config import Scenario
from starserve.sim.experiment import run_experiment
from starserve.workload import WorkloadRequest, load_workload

SUITE = {
    "reasoning-h100": "scenarios/reasoning-h100.yaml",
    "reasoning-qwen7b-h100": "scenarios/reasoning-qwen7b-h100.yaml",
    "bursty-reasoning-h100": "scenarios/bursty-reasoning-h100.yaml",
    "chat-splitwise": "scenarios/chat-splitwise.yaml",
    "reasoning-trace-h100": "scenarios/reasoning-trace-h100.yaml",
}
BASELINES = [name for name, spec in POLICIES.items() if spec.predictor == "none"]
DEFAULT_POLICIES = [*BASELINES, "star", "oracle"]
QUICK_REQUESTS = 300  # per run with --quick
KEYS = ("p99_tpot_ms", "max_rate_at_90pct_slo", "preemptions", "migrations")


def prepare(
    path: str, quick: bool, trace: list[WorkloadRequest] | None, num_requests: int | None
) -> tuple[Scenario, list[WorkloadRequest] | None]:
    """The scenario with the measured error profile (and --quick's or --num-requests' sizes,
    or a trace)."""
    scenario = load_yaml(Scenario, path)
    predictor = scenario.predictor.model_copy(update={"kind": "error_profile"})
    updates: dict[str, Any] = {"predictor": predictor}
    workload = scenario.workload
    search = scenario.rate_search
    if trace is not None and any(r.arrival_time_s > 0 for r in trace):
        workload = workload.model_copy(update={"arrival": "trace", "rate_per_s": None})
    count = QUICK_REQUESTS if quick else num_requests
    if count is not None:
        workload = workload.model_copy(update={"num_requests": count})
        search = search.model_copy(update={"num_requests": count})
    if quick:  # too few requests to saturate a cluster: no max-rate search
        search = search.model_copy(update={"enabled": False})
    updates["workload"], updates["rate_search"] = workload, search
    base = trace[:count] if trace is not None and count is not None else trace
    return scenario.model_copy(update=updates), base


Job = tuple[str, str, bool, str | None, int | None]


def run_one(job: Job) -> tuple[str, str, dict[str, Any]]:
    """One policy on one scenario (a process-pool task): its results.json entry."""
    name, policy, quick, trace_path, num_requests = job
    trace = load_workload(trace_path) if trace_path else None
    scenario, base = prepare(SUITE[name], quick, trace, num_requests)
    results, _ = run_experiment(scenario, [policy], base)
    entry = results["policies"][policy]
    return name, policy, {k: entry[k] for k in (*KEYS, "slo_attainment", "rate_per_s")}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def best_baseline(rows: dict[str, dict[str, Any]], key: str, higher: bool) -> float | None:
    values = [rows[p][key] for p in BASELINES if p in rows and rows[p][key] is not None]
    if not values:
        return None
    return max(values) if higher else min(values)


def gains(table: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, float | None]]:
    """Per scenario: STAR's max rate and P99 TPOT over the best baseline's, oracle over STAR."""
    out = {}
    for name, rows in table.items():
        star = rows.get("star")
        if star is None:
            continue
        oracle = rows.get("oracle")
        out[name] = {
            "max_rate_ratio": ratio(
                star["max_rate_at_90pct_slo"], best_baseline(rows, "max_rate_at_90pct_slo", True)
            ),
            "p99_tpot_ratio": ratio(star["p99_tpot_ms"], best_baseline(rows, "p99_tpot_ms", False)),
            "oracle_max_rate_ratio": None
            if oracle is None
            else ratio(oracle["max_rate_at_90pct_slo"], star["max_rate_at_90pct_slo"]),
        }
    return out


def extreme(values: list[float | None], pick: Any) -> float | None:
    present = [v for v in values if v is not None]
    return pick(present) if present else None


def print_table(table: dict[str, dict[str, dict[str, Any]]]) -> None:
    print("| scenario | policy | P99 TPOT ms | max rate req/s | preemptions | migrations |")
    print("|---|---|---|---|---|---|")
    for name, rows in table.items():
        for policy, row in rows.items():
            rate = row["max_rate_at_90pct_slo"]
            print(
                f"| {name} | {policy} | {row['p99_tpot_ms']:.1f} | "
                f"{'-' if rate is None else f'{rate:.2f}'} | {row['preemptions']} | "
                f"{row['migrations']} |"
            )


def plot(per_scenario: dict[str, dict[str, float | None]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_scenario)
    rate = [per_scenario[n]["max_rate_ratio"] or 0.0 for n in names]
    tpot = [1.0 / t if t else 0.0 for t in (per_scenario[n]["p99_tpot_ratio"] for n in names)]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 3, 4))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], rate, 0.4, label="max rate: STAR / best baseline")
    ax.bar([x + 0.2 for x in xs], tpot, 0.4, label="P99 TPOT: best baseline / STAR")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(list(xs), names, rotation=15, ha="right")
    ax.set_ylabel("STAR's gain (> 1: STAR better)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_scenarios(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SUITE]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(SUITE)}"
        )
    return names


def parse_policies(text: str) -> list[str]:
    try:
        return parse_policy_list(text)
    except Exception as error:  # StarserveError: one line, as argparse prints it
        raise argparse.ArgumentTypeError(str(error)) from None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_REQUESTS} requests per run, P99 TPOT at the scenario rate only: no "
        "max-rate search, since so few requests saturate no cluster (< 1 min on a quiet "
        "machine)",
    )
    parser.add_argument(
        "--num-requests",
        type=int,
        default=None,
        help="requests per run and per rate-search point (default: each scenario's own)",
    )
    parser.add_argument(
        "--policies",
        type=parse_policies,
        default=DEFAULT_POLICIES,
        help=f"comma-separated policies (default: {','.join(DEFAULT_POLICIES)})",
    )
    parser.add_argument(
        "--scenarios",
        type=parse_scenarios,
        default=list(SUITE),
        help=f"comma-separated suite scenarios (default: all of {','.join(SUITE)})",
    )
    parser.add_argument(
        "--trace",
        type=Path,
        default=None,
        help="CSV/JSONL trace replacing each scenario's requests (its timestamps when present)",
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        action="append",
        default=[],
        help="a previous run's policy_suite.json: its (scenario, policy) rows are taken "
        "instead of run again (repeatable; later files win). Only rows of unchanged code!",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/out/policy_suite"))
    parser.add_argument(
        "--workers", type=int, default=1, help="processes running (scenario, policy) pairs"
    )
    args = parser.parse_args()
    if args.trace is not None and not args.trace.is_file():
        parser.error(f"--trace: {args.trace}: no such file")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    trace = str(args.trace) if args.trace else None
    if args.num_requests is not None and args.num_requests < 1:
        parser.error("--num-requests must be >= 1")
    table: dict[str, dict[str, dict[str, Any]]] = {n: {} for n in args.scenarios}
    for path in args.reuse:
        if not path.is_file():
            parser.error(f"--reuse: {path}: no such file")
        old = json.loads(path.read_text())["table"]
        for n in args.scenarios:
            table[n].update({p: row for p, row in old.get(n, {}).items() if p in args.policies})
    jobs: list[Job] = [  # policy by policy: an interrupted run still has whole columns
        (n, p, args.quick, trace, args.num_requests)
        for p in args.policies
        for n in args.scenarios
        if p not in table[n]
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "policy_suite.partial.json"
    start = time.perf_counter()
    with tqdm(total=len(jobs), desc="policy suite", unit="run") as bar:
        if args.workers == 1:
            done = map(run_one, jobs)
        else:
            pool = ProcessPoolExecutor(args.workers)
            done = pool.map(run_one, jobs)
        for name, policy, row in done:
            table[name][policy] = row
            partial.write_text(json.dumps({"table": table}, indent=1))  # --reuse reads it
            bar.set_postfix_str(f"{name}/{policy}")
            bar.update(1)
    wall_s = time.perf_counter() - start
    for name in table:  # keep the --policies order
        table[name] = {p: table[name][p] for p in args.policies}
    per_scenario = gains(table)
    (args.out / "policy_suite.json").write_text(
        json.dumps({"table": table, "star_vs_best_baseline": per_scenario}, indent=1)
    )
    if per_scenario:
        plot(per_scenario, args.out / "star_gain.png")
    print_table(table)
    rates = [g["max_rate_ratio"] for g in per_scenario.values()]
    tpots = [g["p99_tpot_ratio"] for g in per_scenario.values()]
    result = {
        "star_min_max_rate_ratio_vs_best_baseline": extreme(rates, min),
        "star_best_max_rate_ratio_vs_best_baseline": extreme(rates, max),
        "star_max_p99_tpot_ratio_vs_best_baseline": extreme(tpots, max),
        "star_min_p99_tpot_ratio_vs_best_baseline": extreme(tpots, min),
        "oracle_min_max_rate_ratio_vs_star": extreme(
            [g["oracle_max_rate_ratio"] for g in per_scenario.values()], min
        ),
        "per_scenario": per_scenario,
        "baselines": [p for p in BASELINES if p in args.policies],
        "quick": args.quick,
        "num_requests": args.num_requests,
        "wall_s": wall_s,
        **result_tags(),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
