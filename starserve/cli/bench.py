"""`starserve bench`: a vLLM `bench serve`-compatible benchmark against a running server."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from starserve.errors import StarserveError

SLO_NAMES = ("ttft", "tpot", "e2el")


def parse_goodput(items: list[str]) -> dict[str, float] | None:
    """`["ttft:500", "tpot:50"]` -> {"ttft": 500.0, "tpot": 50.0} (vLLM's --goodput syntax)."""
    if not items:
        return None
    slos: dict[str, float] = {}
    for item in (part for raw in items for part in raw.split()):
        name, sep, value = item.partition(":")
        if not sep or name not in SLO_NAMES:
            raise StarserveError(f"--goodput {item!r}: expected NAME:MS with NAME in {SLO_NAMES}")
        try:
            slos[name] = float(value)
        except ValueError:
            raise StarserveError(f"--goodput {item!r}: {value!r} is not a number of ms") from None
        if slos[name] < 0:
            raise StarserveError(f"--goodput {item!r}: must be >= 0 ms")
    return slos


def load_requests(
    dataset: str, num_prompts: int, rate: float, burstiness: float, seed: int
) -> list[Any]:
    """Prompts from a workload name or file, with open-loop gamma arrivals at `rate`."""
    from starserve.workload import gamma_arrivals, load_workload

    requests = load_workload(dataset, num_requests=num_prompts, seed=seed)
    if not requests or any(r.prompt is None for r in requests):
        raise StarserveError(f"{dataset}: has no prompt text (use a prompt set, e.g. alpaca_eval)")
    return gamma_arrivals(requests, rate, 1 / math.sqrt(burstiness), seed)


def print_summary(result: dict[str, Any]) -> None:
    rows = [
        ("Successful requests", result["completed"]),
        ("Benchmark duration (s)", f"{result['duration']:.2f}"),
        ("Request throughput (req/s)", f"{result['request_throughput']:.2f}"),
        ("Output token throughput (tok/s)", f"{result['output_throughput']:.2f}"),
    ]
    if "request_goodput" in result:
        rows.append(("Request goodput (req/s)", f"{result['request_goodput']:.2f}"))
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "p99"):
            rows.append(
                (
                    f"{stat.capitalize()} {metric.upper()} (ms)",
                    f"{result[f'{stat}_{metric}_ms']:.2f}",
                )
            )
    typer.echo("=" * 50)
    for name, value in rows:
        typer.echo(f"{name:<40}{value:>10}")
    typer.echo("=" * 50)


def command(
    base_url: str = typer.Option(
        "http://127.0.0.1:8000", "--base-url", help="Server to benchmark."
    ),
    endpoint: str = typer.Option(
        "/v1/completions", "--endpoint", help="/v1/completions or /v1/chat/completions."
    ),
    dataset: str = typer.Option(
        ..., "--dataset", help="Prompt set name (starserve workload list) or a JSONL file."
    ),
    num_prompts: int = typer.Option(100, "--num-prompts", help="Number of requests to send."),
    request_rate: float = typer.Option(
        float("inf"), "--request-rate", help="Mean arrivals per second (inf = all at once)."
    ),
    burstiness: float = typer.Option(
        1.0, "--burstiness", help="Gamma shape of inter-arrival times (1 = Poisson), as vLLM."
    ),
    max_tokens: int | None = typer.Option(
        None,
        "--max-tokens",
        help="Output cap per request (default: the dataset's length, else 256).",
    ),
    ignore_eos: bool = typer.Option(
        False, "--ignore-eos", help="Generate exactly max_tokens tokens."
    ),
    temperature: float = typer.Option(
        0.0, "--temperature", help="Sampling temperature (0 = greedy)."
    ),
    goodput: list[str] = typer.Option(
        [], "--goodput", help="SLOs as NAME:MS (ttft, tpot, e2el), e.g. --goodput ttft:500 tpot:50."
    ),
    save_result: Path | None = typer.Option(
        None, "--save-result", help="Write the result JSON here."
    ),
    model: str | None = typer.Option(
        None, "--model", help="Model id (default: what /v1/models lists)."
    ),
    api_key: str | None = typer.Option(None, "--api-key", help="Bearer token for the server."),
    seed: int = typer.Option(0, "--seed", help="Seed of prompt sampling and arrivals."),
    disable_tqdm: bool = typer.Option(False, "--disable-tqdm", help="No progress bar."),
    more_goodput: list[str] | None = typer.Argument(
        None,
        hidden=True,
        help="Further NAME:MS SLOs after --goodput (vLLM's space-separated form).",
    ),
) -> None:
    """Send an open-loop stream of prompts, stream the answers, report vLLM's metrics."""
    import asyncio

    from starserve.benchclient import BenchOptions, run_benchmark

    if num_prompts < 1:
        raise StarserveError(f"--num-prompts must be >= 1, got {num_prompts}")
    if burstiness <= 0:
        raise StarserveError(f"--burstiness must be > 0, got {burstiness}")
    if endpoint not in ("/v1/completions", "/v1/chat/completions"):
        raise StarserveError(f"--endpoint {endpoint}: use /v1/completions or /v1/chat/completions")
    options = BenchOptions(
        base_url=base_url.rstrip("/"),
        endpoint=endpoint,
        model=model,
        api_key=api_key,
        max_tokens=max_tokens,
        ignore_eos=ignore_eos,
        temperature=temperature,
        goodput_slos_ms=parse_goodput([*goodput, *(more_goodput or [])]),
        request_rate=request_rate,
        burstiness=burstiness,
        show_progress=not disable_tqdm,
    )
    requests = load_requests(dataset, num_prompts, request_rate, burstiness, seed)
    try:
        result = asyncio.run(run_benchmark(options, requests))
    except OSError as err:
        raise StarserveError(f"cannot reach {base_url}: {err}") from None
    print_summary(result)
    if save_result is not None:
        save_result.write_text(json.dumps(result, indent=2))
        typer.echo(f"result saved to {save_result}")
