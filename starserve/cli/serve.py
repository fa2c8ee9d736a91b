"""`starserve serve`: the PD-disaggregated cluster behind an OpenAI-compatible API."""

from __future__ import annotations

from pathlib import Path

import typer

from starserve.errors import StarserveError
from starserve.hardware import DTYPE_HELP, check_device, resolve_dtype, startup_line


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise StarserveError(f"cannot listen on {host}:{port}: {err.strerror}") from None


def command(
    prefill: int = typer.Option(1, "--prefill", help="Number of prefill instances (Ray actors)."),
    decode: int = typer.Option(2, "--decode", help="Number of decode instances (Ray actors)."),
    policy: str = typer.Option(
        "star",
        "--policy",
        help=(
            "Dispatch + rescheduling policy from starserve.policy: round_robin, "
            "least_current_load, least_predicted_load, llumnix, star, or the STAR ablations "
            "star_no_migration, star_current_only, star_predicted_only."
        ),
    ),
    model: Path | None = typer.Option(
        None, "--model", help="GGUF file or HF folder to serve (default: bundled SmolLM2-135M)."
    ),
    predictor: Path | None = typer.Option(
        None, "--predictor", help="Remaining-length predictor folder (default: the shipped one)."
    ),
    no_predictor: bool = typer.Option(
        False, "--no-predictor", help="Run without predictions (policies see current load only)."
    ),
    predictor_refresh: bool = typer.Option(
        False,
        "--predictor-refresh",
        help="Refit the predictor online from finished requests (background thread per "
        "instance; swapped in only when it beats the current one on held-back requests).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="TCP port to listen on."),
    api_key: str | None = typer.Option(
        None, "--api-key", help="Require 'Authorization: Bearer KEY' on /v1 routes."
    ),
    max_num_requests: int = typer.Option(
        256, "--max-num-requests", help="Admission limit: requests in flight beyond it get 429."
    ),
    dtype: str = typer.Option(
        "auto", "--dtype", help="Engine dtype of every instance: " + DTYPE_HELP
    ),
    device: str = typer.Option(
        "cpu",
        "--device",
        help="Where every instance runs: cpu, or cuda (weights, paged KV and sampling on the GPU; "
        "attention over the paged blocks in PyTorch). cuda without a GPU is an error.",
    ),
    kv_blocks: int | None = typer.Option(
        None,
        "--kv-blocks",
        help="KV cache blocks per instance (default: from the engine's memory).",
    ),
    poll_interval_ms: float = typer.Option(
        50.0, "--poll-interval-ms", help="How often the controller polls instance snapshots."
    ),
    failover_kv_tokens: int = typer.Option(
        16_384,
        "--failover-kv-tokens",
        help="Prefill hand-off KV the controller keeps, in context tokens over all requests, "
        "so a request whose decode instance dies resumes on it and recomputes only the tokens "
        "streamed since the hand-off (oldest requests dropped first; 0 = off: replay prompt + "
        "output).",
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        help="Join this Ray cluster (e.g. auto, ray://host:10001) instead of a local one.",
    ),
) -> None:
    """Start prefill and decode instances on Ray, a controller, and the HTTP API."""
    from starserve.cluster.config import ClusterConfig
    from starserve.cluster.policies import policy_names
    from starserve.config import validate
    from starserve.server.run import ServeOptions, serve_forever

    for label, path in (("--model", model), ("--predictor", predictor)):
        if path is not None and not path.exists():
            raise StarserveError(f"{label} {path}: no such file or folder")
    if policy not in policy_names():
        raise StarserveError(f"unknown policy {policy!r}; choose from {', '.join(policy_names())}")
    if not 0 < port < 65536:
        raise StarserveError(f"--port must be in 1..65535, got {port}")
    if max_num_requests < 1:
        raise StarserveError(f"--max-num-requests must be >= 1, got {max_num_requests}")
    _check_port_free(host, port)
    dtype = resolve_dtype(dtype)
    device = check_device(device)
    typer.echo(startup_line(dtype, device), err=True)
    engine: dict[str, object] = {"num_kv_blocks": kv_blocks} if kv_blocks is not None else {}
    if device != "cpu":
        engine["device"] = device
    cluster = validate(
        ClusterConfig,
        {
            "num_prefill": prefill,
            "num_decode": decode,
            "policy": policy,
            "model": str(model) if model else None,
            "dtype": dtype,
            "predictor": str(predictor) if predictor else None,
            "use_predictor": not no_predictor,
            "predictor_refresh": predictor_refresh,
            "poll_interval_ms": poll_interval_ms,
            "failover_kv_tokens": failover_kv_tokens,
            "engine": engine,
        },
        source="serve options",
    )
    options = ServeOptions(
        cluster=cluster,
        host=host,
        port=port,
        api_key=api_key,
        max_num_requests=max_num_requests,
        ray_address=ray_address,
    )
    serve_forever(options)
