"""`starserve model`: convert the GGUF model to a Hugging Face folder, or generate from a prompt."""

from __future__ import annotations

from pathlib import Path

import typer

from starserve.errors import StarserveError
from starserve.hardware import DTYPE_HELP, check_device, resolve_dtype, startup_line

app = typer.Typer(
    help="The serving model: conversion and a quick generation check.", no_args_is_help=True
)


@app.command("export-hf")
def export_hf_command(
    gguf: Path = typer.Argument(..., help="GGUF file to convert (e.g. the bundled SmolLM2 file)"),
    out_dir: Path = typer.Argument(
        ..., help="folder to write (config.json, model.safetensors, tokenizer)"
    ),
) -> None:
    """Dequantize a GGUF model and write it as a Hugging Face folder (float32 safetensors)."""
    from starserve.model.loader import export_hf

    if out_dir.exists() and any(out_dir.iterdir()):
        raise StarserveError(f"{out_dir}: folder exists and is not empty")
    export_hf(gguf, out_dir)
    typer.echo(f"wrote {out_dir}")


@app.command("generate")
def generate_command(
    prompt: str = typer.Argument(..., help="user message (the chat template is applied)"),
    model: str | None = typer.Option(None, help="GGUF file or HF folder; default: bundled SmolLM2"),
    max_tokens: int = typer.Option(64, help="generated tokens at most"),
    temperature: float = typer.Option(0.0, help="0 = greedy"),
    top_p: float = typer.Option(1.0, help="nucleus sampling mass, in (0, 1]"),
    seed: int | None = typer.Option(None, help="per-request seed for sampling"),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    threads: int | None = typer.Option(None, help="torch threads (default: torch's choice)"),
    device: str = typer.Option("cpu", help="cpu, or cuda (an error without a GPU)"),
) -> None:
    """Generate a reply with the starserve engine, streaming the text."""
    from starserve.config import validate
    from starserve.engine import Engine, EngineConfig, SamplingParams

    dtype = resolve_dtype(dtype)
    device = check_device(device)
    typer.echo(startup_line(dtype, device), err=True)
    settings = {"model": model, "dtype": dtype, "num_threads": threads, "device": device}
    config = validate(EngineConfig, settings, "options")
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    try:
        params.validate()
    except ValueError as err:
        raise StarserveError(str(err)) from None
    engine = Engine(config)
    engine.add_request(
        "cli", engine.apply_chat_template([{"role": "user", "content": prompt}]), params
    )
    while engine.has_unfinished_requests():
        for out in engine.step():
            typer.echo(out.new_text, nl=False)
    typer.echo("")
