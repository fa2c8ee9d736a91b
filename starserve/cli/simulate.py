"""`starserve simulate`: run a scenario's policies in the cluster simulator."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from starserve.errors import StarserveError


def command(
    scenario_path: Path = typer.Argument(
        ..., metavar="SCENARIO.yaml", help="Scenario file (see scenarios/)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output folder for results.json and the PNG plots."
    ),
    policies: str | None = typer.Option(
        None, "--policies", help="Comma-separated policy names (default: the scenario's list)."
    ),
    trace: Path | None = typer.Option(
        None,
        "--trace",
        help="CSV (arrived_at,num_prefill_tokens,num_decode_tokens) replacing the scenario's "
        "requests; its own timestamps are used when present.",
    ),
    rate_scale: float = typer.Option(
        1.0, "--rate-scale", help="Multiply the request rate (or compress a trace's timeline) by X."
    ),
    sweep: str | None = typer.Option(
        None,
        "--sweep",
        help="Comma-separated request rates (req/s): also run every (policy, rate, seed) as Ray "
        "tasks and write sweep.json.",
    ),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated seeds for --sweep."),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray cluster for --sweep (default: start a local Ray)."
    ),
    profile: Path | None = typer.Option(
        None,
        "--profile",
        help="Hardware profile from `starserve profile` (sets the scenario's cluster.profile): "
        "simulate that machine instead of the scenario's GPU.",
    ),
    no_rate_search: bool = typer.Option(
        False, "--no-rate-search", help="Skip the max-rate-at-SLO search (faster)."
    ),
) -> None:
    """Simulate a PD-disaggregated cluster under each policy; write results.json and plots."""
    from tqdm import tqdm

    from starserve.config import load_yaml
    from starserve.policy import parse_policy_list
    from starserve.sim.config import Scenario
    from starserve.sim.experiment import run_experiment
    from starserve.sim.plots import write_plots
    from starserve.sim.sweep import parse_number_list, sweep_grid
    from starserve.workload import load_workload

    if rate_scale <= 0:
        raise StarserveError(f"--rate-scale must be > 0, got {rate_scale}")
    scenario = load_yaml(Scenario, scenario_path)
    names = (
        parse_policy_list(policies) if policies else parse_policy_list(",".join(scenario.policies))
    )
    base = None
    if trace is not None:
        if not trace.is_file():
            raise StarserveError(f"{trace}: no such file")
        base = load_workload(str(trace))
        has_times = any(r.arrival_time_s > 0 for r in base)
        workload = scenario.workload.model_copy(
            update={"arrival": "trace", "rate_per_s": None} if has_times else {}
        )
        scenario = scenario.model_copy(update={"workload": workload})
    if profile is not None:
        from starserve.profile.table import read_profile

        read_profile(profile)  # a bad file is a one-line error before anything runs
        cluster = scenario.cluster.model_copy(update={"profile": str(profile)})
        scenario = scenario.model_copy(update={"cluster": cluster})
    if no_rate_search:
        search = scenario.rate_search.model_copy(update={"enabled": False})
        scenario = scenario.model_copy(update={"rate_search": search})
    out.mkdir(parents=True, exist_ok=True)
    with tqdm(desc="simulate", unit="run") as bar:

        def progress(message: str) -> None:
            bar.set_postfix_str(message)
            bar.update(1)

        results, runs = run_experiment(scenario, names, base, rate_scale, progress)
    if sweep is not None:
        from starserve.sim.sweep_ray import run_sweep_on_ray

        grid = sweep_grid(
            names, parse_number_list(sweep, "--sweep"), parse_number_list(seeds, "--seeds", int)
        )
        rows = run_sweep_on_ray(scenario, grid, base, ray_address)
        (out / "sweep.json").write_text(json.dumps(rows, indent=1))
        for name in names:
            results["policies"][name]["sweep"] = [
                r for r in rows if r["policy"] == name and r["seed"] == grid[0].seed
            ]
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plots = write_plots(results, runs, out)
    for name, entry in results["policies"].items():
        rate = entry["max_rate_at_90pct_slo"]
        print(
            f"{name:>20}: p99 TPOT {entry['p99_tpot_ms']:8.1f} ms  attainment {entry['slo_attainment']:.3f}  "
            f"max rate@90% {'-' if rate is None else f'{rate:.2f}'} req/s  preemptions {entry['preemptions']}  "
            f"migrations {entry['migrations']}"
        )
    print(f"wrote {out / 'results.json'} and {len(plots)} plots")
