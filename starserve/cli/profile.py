"""`starserve profile`: measure this machine's engine step latency into a hardware profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from starserve.errors import StarserveError


def _int_list(text: str | None, flag: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise StarserveError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise StarserveError(f"{flag} values must be >= 1, got {text!r}")
    return values


def command(
    out: Path = typer.Option(
        Path("profile.csv"), "--out", help="Profile file to write (a CSV with a # header)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="A small grid (3 batch sizes x 2 contexts, 2 chunk sizes): < 1 min."
    ),
    model: str | None = typer.Option(
        None, "--model", help="GGUF file or HF folder (default: the bundled SmolLM2)."
    ),
    dtype: str = typer.Option(
        "bfloat16", "--dtype", help="float32 or bfloat16 (a cluster instance's default: bfloat16)."
    ),
    threads: int = typer.Option(
        1, "--threads", help="Torch threads (a cluster instance runs with 1)."
    ),
    batch_sizes: str | None = typer.Option(
        None, "--batch-sizes", help="Decode batch sizes, comma-separated (default: 1,2,...,64)."
    ),
    context_tokens: str | None = typer.Option(
        None,
        "--context-tokens",
        help="Total KV tokens of a decode batch, comma-separated (default: 512,2048,8192,32768).",
    ),
    chunk_sizes: str | None = typer.Option(
        None, "--chunk-sizes", help="Prefill chunk sizes in tokens (default: 32,...,1024)."
    ),
    prompt_tokens: int | None = typer.Option(
        None, "--prompt-tokens", help="Prompt length each chunk size prefills (default: 2048)."
    ),
    colocated: int = typer.Option(
        0,
        "--colocated",
        help="Busy sibling engine processes beside the measured one (a CPU host's cluster "
        "instances share its cores: 2 for the default 1 prefill + 2 decode).",
    ),
    steps: int | None = typer.Option(
        None, "--steps", help="Timed decode steps per point (default: 8; quick: 4)."
    ),
) -> None:
    """Measure the real engine's decode steps (batch size x context tokens) and prefill chunks
    on this machine; write a profile `starserve simulate --profile` reads."""
    import dataclasses

    from tqdm import tqdm

    from starserve.profile.measure import (
        FULL_GRID,
        QUICK_GRID,
        EngineSetup,
        num_progress_steps,
        run_profile,
    )
    from starserve.profile.table import write_profile
    from starserve.sim.measured import MeasuredLatencyModel

    if dtype not in ("float32", "bfloat16"):
        raise StarserveError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
    if threads < 1:
        raise StarserveError(f"--threads must be >= 1, got {threads}")
    if colocated < 0:
        raise StarserveError(f"--colocated must be >= 0, got {colocated}")
    if steps is not None and steps < 2:
        raise StarserveError(f"--steps must be >= 2, got {steps}")
    if prompt_tokens is not None and prompt_tokens < 16:
        raise StarserveError(f"--prompt-tokens must be >= 16, got {prompt_tokens}")
    grid = QUICK_GRID if quick else FULL_GRID
    overrides: dict[str, Any] = {
        "batch_sizes": _int_list(batch_sizes, "--batch-sizes"),
        "context_tokens": _int_list(context_tokens, "--context-tokens"),
        "chunk_sizes": _int_list(chunk_sizes, "--chunk-sizes"),
        "prefill_prompt_tokens": prompt_tokens,
        "num_steps": steps,
    }
    grid = dataclasses.replace(grid, **{k: v for k, v in overrides.items() if v is not None})
    if not grid.decode_points():
        raise StarserveError("no decode point: context tokens / batch size must be in [16, 4096]")
    setup = EngineSetup(model=model, dtype=dtype, num_threads=threads)
    with tqdm(total=num_progress_steps(grid), desc="profile", unit="point") as bar:

        def progress(message: str) -> None:
            bar.set_postfix_str(message)
            bar.update(1)

        profile = run_profile(grid, setup, progress, colocated)
    write_profile(profile, out)
    fitted = MeasuredLatencyModel.from_profile(profile)
    print(
        f"wrote {out}: {profile.describe()}; decode {fitted.decode_fixed_s(1) * 1000:.1f} ms at "
        f"B=1 + {fitted.s_per_kv_token * 1e6:.2f} us per KV token"
    )
