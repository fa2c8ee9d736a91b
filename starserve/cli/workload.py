"""`starserve workload`: list the known workloads and describe one (or a user file)."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from starserve.errors import StarserveError

if TYPE_CHECKING:
    from starserve.workload import WorkloadStats

app = typer.Typer(
    help="Request traces, prompt sets and their statistics.",
    no_args_is_help=True,
)


class Arrival(StrEnum):
    poisson = "poisson"
    gamma = "gamma"
    trace = "trace"


@app.command("list")
def list_command() -> None:
    """List the known workloads: name, kind, one-line description and data file."""
    from starserve.workload import list_workloads

    table = Table(title="known workloads (files under the shared data directory)")
    table.add_column("name", no_wrap=True)
    table.add_column("kind")
    table.add_column("description")
    table.add_column("file", overflow="fold")
    for info in list_workloads():
        table.add_row(info.name, info.kind, info.description, info.path)
    Console().print(table)


@app.command("describe")
def describe_command(
    name_or_path: str = typer.Argument(
        ..., metavar="NAME|PATH", help="A name from `starserve workload list`, or a CSV/JSONL file."
    ),
    rate: float | None = typer.Option(
        None, "--rate", help="Request rate in req/s for the arrival process (trace: rescale to it)."
    ),
    arrival: Arrival | None = typer.Option(
        None,
        "--arrival",
        help="Arrival process: poisson, gamma (needs --cv) or the trace's own timestamps. "
        "Default: trace if the workload has timestamps and no --rate is given, else poisson.",
    ),
    cv: float = typer.Option(
        1.0, "--cv", help="Coefficient of variation of inter-arrival times (gamma only)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for sampling and arrival processes."),
    num_requests: int | None = typer.Option(
        None, "--num-requests", help="Use only this many requests (see docs/workload.md)."
    ),
) -> None:
    """Print count, time span, mean arrival rate and input/output token statistics."""
    from starserve.workload import apply_arrivals, describe, load_workload
    from starserve.workload.arrivals import has_timestamps

    process = arrival.value if arrival is not None else None
    if process is None and rate is not None:
        process = "poisson"
    if cv != 1.0 and process != "gamma":
        raise StarserveError("--cv applies only to --arrival gamma")
    requests = load_workload(name_or_path, num_requests=num_requests, seed=seed)
    if process is not None:
        requests = apply_arrivals(requests, process, rate_per_s=rate, cv=cv, seed=seed)
    stats = describe(requests)
    Console().print(_stats_table(name_or_path, stats, has_timestamps(requests)))


def _stats_table(title: str, stats: WorkloadStats, timed: bool) -> Table:
    table = Table(title=title)
    table.add_column("statistic")
    table.add_column("value", justify="right")
    table.add_row("count", str(stats.count))
    table.add_row("time span (s)", f"{stats.time_span_s:.1f}" if timed else "0 (no timestamps)")
    rate = stats.mean_rate_per_s
    table.add_row("mean arrival rate (req/s)", f"{rate:.3f}" if rate is not None else "n/a")
    for label, tokens in (("input", stats.input_tokens), ("output", stats.output_tokens)):
        for key in ("mean", "p50", "p90", "p99", "max"):
            value = getattr(tokens, key)
            table.add_row(f"{label} tokens {key}", f"{value:.1f}" if key != "max" else str(value))
    return table
