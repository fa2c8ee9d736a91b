"""`starserve predictor ...`: collect labelled hidden states, train STAR and baselines, evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from starserve.errors import StarserveError
from starserve.hardware import DTYPE_CHOICES, DTYPE_HELP

app = typer.Typer(
    help="Remaining-length predictor (STAR): collect data, train, evaluate.",
    no_args_is_help=True,
)


def _default_collection() -> Path:
    from starserve.paths import cache_dir

    return cache_dir() / "predictor" / "collection"


def _resolve_data(data: list[Path] | None) -> list[Path]:
    """--data (one or more), else the default collection if it exists, else the sample."""
    if data:
        return data
    from starserve.predictor.data import MANIFEST_NAME
    from starserve.predictor.runtime import DEFAULT_DIR

    collected = _default_collection()
    return [collected if (collected / MANIFEST_NAME).is_file() else DEFAULT_DIR / "sample"]


def _say(message: str) -> None:
    typer.echo(message, err=True)


@app.command()
def collect(
    prompts: list[Path] = typer.Option(
        ...,
        "--prompts",
        help="JSONL prompt file with a 'prompt' (or 'problem') field; repeat for several.",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        help="Collection directory (default: <cache>/predictor/collection). Rerunning resumes.",
    ),
    samples_per_prompt: int = typer.Option(
        2, min=1, help="Sampled answers per prompt (>= 2 measures the noise floor)."
    ),
    max_tokens: int = typer.Option(
        512, min=16, help="Output cap; answers reaching it are labelled as ending at the cap."
    ),
    temperature: float = typer.Option(0.7, min=0.0, help="Sampling temperature."),
    top_p: float = typer.Option(0.9, min=0.01, max=1.0, help="Nucleus sampling top-p."),
    interval: int = typer.Option(
        16, min=1, help="k: record the hidden state every k generated tokens."
    ),
    middle_layer: int = typer.Option(
        19,
        min=0,
        help="Engine index (0-based) of the middle layer also tapped for TRAIL (19 = output of layer 20 of 30).",
    ),
    max_prompts: int = typer.Option(None, min=1, help="Use at most this many prompts per file."),
    max_prompt_tokens: int = typer.Option(
        1024, min=8, help="Skip prompts longer than this (chat template included)."
    ),
    concurrency: int = typer.Option(
        48, min=1, help="Requests decoded together (continuous batching)."
    ),
    max_requests: int = typer.Option(
        None, min=1, help="Stop after this many new answers (resume later)."
    ),
    shard_requests: int = typer.Option(
        64,
        min=1,
        help="Write a shard every this many finished answers (what a killed run keeps).",
    ),
    threads: int = typer.Option(None, min=1, help="torch CPU threads (default: torch's choice)."),
    seed: int = typer.Option(0, help="Seed for prompt order and per-answer sampling."),
    dtype: str = typer.Option("auto", help="Engine dtype: " + DTYPE_HELP),
    step_by_step: bool = typer.Option(
        False,
        "--step-by-step",
        help="Append a 'reason step by step' instruction to math problems (files with a "
        "'problem' field: MATH-500, AIME, AMC) for long, reasoning-style answers; other files "
        "are served as they are.",
    ),
    pool_states: bool = typer.Option(
        True,
        "--pool-states/--no-pool-states",
        help="Also record each token's predictive entropy and the entropy-weighted and plain "
        "pools of the states between taps (PLP baseline, STAR's recent-state pooling).",
    ),
) -> None:
    """Answer real prompts with the engine and store labelled hidden states (float16, resumable)."""
    from starserve.hardware import resolve_dtype, startup_line
    from starserve.predictor.collect import CollectSettings
    from starserve.predictor.collect_run import collect as run_collect

    if dtype not in DTYPE_CHOICES:
        raise typer.BadParameter(
            f"must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}", param_hint="--dtype"
        )
    dtype = resolve_dtype(dtype)
    _say(startup_line(dtype))
    settings = CollectSettings(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p,
        samples_per_prompt=samples_per_prompt, interval=interval, middle_layer=middle_layer,
        max_prompt_tokens=max_prompt_tokens, max_prompts_per_file=max_prompts, seed=seed,
        dtype=dtype, step_by_step=step_by_step, pool_states=pool_states,
    )  # fmt: skip
    out_dir = out or _default_collection()
    manifest = run_collect(
        prompts, out_dir, settings, concurrency, shard_requests=shard_requests,
        max_requests=max_requests, num_threads=threads,
    )  # fmt: skip
    _say(f"{manifest['num_requests']} answers in {out_dir}")


@app.command()
def trim(
    prompts: list[Path] = typer.Option(
        ...,
        "--prompts",
        help="The prompt files of the collection, in the order `collect` was given them.",
    ),
    data: Path = typer.Option(
        None, "--data", help="Collection directory (default: <cache>/predictor/collection)."
    ),
    out: Path = typer.Option(..., "--out", help="Where to write the trimmed collection."),
) -> None:
    """Keep the unbiased part of a collection stopped early: the longest prefix of its
    (seeded, length-independent) plan whose answers all finished. Short answers finish first,
    so all finished answers of a stopped run are biased short."""
    from transformers import AutoTokenizer

    from starserve.model.loader import resolve_hf_dir
    from starserve.predictor.collect import CollectSettings, trim_to_complete_prefix
    from starserve.predictor.data import read_manifest

    data_dir = data or _default_collection()
    settings = CollectSettings(**read_manifest(data_dir)["settings"])
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_hf_dir(None)[1]))

    def is_too_long(text: str) -> bool:
        ids: Any = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return len(ids) > settings.max_prompt_tokens

    manifest = trim_to_complete_prefix(data_dir, prompts, out, is_too_long)
    _say(f"kept {manifest['num_requests']} answers (an unbiased prefix of the plan) in {out}")


@app.command()
def train(
    data: list[Path] = typer.Option(
        None,
        "--data",
        help="Collection directory; repeat to train on several with the same cap (default: "
        "the collected set, else the committed sample).",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        help="Where to write the trained predictors (default: <cache>/predictor/models).",
    ),
    epochs: int = typer.Option(
        100, min=1, help="Maximum training epochs (early stopping on validation loss)."
    ),
    seed: int = typer.Option(0, help="Training seed."),
) -> None:
    """Train STAR and the baselines on the train split (validation split for early stopping)."""
    from starserve.paths import cache_dir
    from starserve.predictor.data import load_dataset
    from starserve.predictor.train import save_all, train_all
    from starserve.predictor.training import FitConfig

    dataset = load_dataset(_resolve_data(data))
    train_ds, val_ds = dataset.split("train"), dataset.split("val")
    trained = train_all(train_ds, val_ds, FitConfig(max_epochs=epochs, seed=seed), _say)
    out_dir = out or cache_dir() / "predictor" / "models"
    save_all(out_dir, trained, train_ds, val_ds)
    for name, result in trained.fits.items():
        _say(
            f"{name}: val loss {result.val_losses[0]:.4f} -> {result.best_val_loss:.4f} (epoch {result.best_epoch})"
        )
    _say(f"wrote {out_dir}")


@app.command(name="eval")
def evaluate(
    data: list[Path] = typer.Option(
        None,
        "--data",
        help="Collection to evaluate on (its test split; repeat for several; default: the "
        "collected set, else the committed sample).",
    ),
    models: Path = typer.Option(
        None, "--models", help="Trained predictors (default: the shipped ones)."
    ),
    prompts: Path = typer.Option(
        None,
        "--prompts",
        help="Instead of --data: collect answers to this prompt file first and evaluate on all of them.",
    ),
    max_prompts: int = typer.Option(
        None, min=1, help="With --prompts: use at most this many prompts."
    ),
    samples_per_prompt: int = typer.Option(2, min=1, help="With --prompts: answers per prompt."),
    split: str = typer.Option(
        "test", help="Which split of --data: test (held-out prompts), val, train or all."
    ),
    out: Path = typer.Option(
        Path("out/predictor_eval"),
        "--out",
        help="Output directory (eval.json, mae_vs_progress.png, error_profile.json).",
    ),
) -> None:
    """Evaluate STAR and the baselines on held-out prompts; write DIR/eval.json and a plot."""
    from starserve.predictor.collect_run import measure_decode_step_s
    from starserve.predictor.data import load_dataset
    from starserve.predictor.report import run_eval
    from starserve.predictor.runtime import DEFAULT_DIR

    models_dir = models or DEFAULT_DIR
    if prompts is not None:
        if data:
            raise StarserveError("give either --data or --prompts, not both")
        data_dir = _collect_for_eval(prompts, models_dir, max_prompts, samples_per_prompt, out)
        test = load_dataset(data_dir)
    else:
        if split not in ("test", "val", "train", "all"):
            raise StarserveError(f"--split {split!r}: expected test, val, train or all")
        dataset = load_dataset(_resolve_data(data))
        test = dataset if split == "all" else dataset.split(split)
    if not test.requests:
        raise StarserveError("no held-out requests to evaluate on")
    _say("timing an engine decode step at batch 32")
    step_s = measure_decode_step_s(dtype=test.meta.get("settings", {}).get("dtype", "float32"))
    result = run_eval(models_dir, test, out, step_s, _say)
    for name, row in result["predictors"].items():
        fraction = row["cost_fraction_of_step"]
        share = "n/a" if fraction is None else f"{100 * fraction:.3f}%"
        typer.echo(
            f"{name:20s} MAE {row['mae']:7.1f}  per-request {row['mae_per_request']:7.1f}  "
            f"params {row['params']:>10,d}  {row['cost_us']:9.1f} us/batch32  ({share} of a step)"
        )
    typer.echo(f"wrote {out / 'eval.json'}")


def _collect_for_eval(
    prompts: Path, models_dir: Path, max_prompts: int | None, samples: int, out: Path
) -> Path:
    """Collect with the settings the shipped predictors were trained under."""
    from starserve.predictor.collect import CollectSettings
    from starserve.predictor.collect_run import collect as run_collect
    from starserve.predictor.store import load_module

    _, star_meta = load_module(models_dir, "star_mlp")
    _, trail_meta = load_module(models_dir, "trail")
    settings = CollectSettings(
        max_tokens=int(star_meta["max_output_tokens"]), interval=int(star_meta["interval"]),
        middle_layer=int(trail_meta["architecture"]["layer"]), samples_per_prompt=samples,
        max_prompts_per_file=max_prompts,
    )  # fmt: skip
    data_dir = out / "collection"
    run_collect([prompts], data_dir, settings)
    return data_dir
