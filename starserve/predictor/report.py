"""`predictor eval`: run every predictor on a held-out split, write eval.json, a plot, a profile."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np

from starserve.errors import StarserveError
from starserve.predictor.baselines import MiniLMEncoder
from starserve.predictor.data import Dataset
from starserve.predictor.evaluate import (
    GENERATED_EDGES,
    PROGRESS_EDGES,
    accuracy,
    calibration,
    costs_us,
    load_predictor_set,
    parameter_counts,
    predict_all,
    star_calibration,
)

PROFILE_FORMAT = "starserve-predictor-error-profile"
MAX_PROFILE_SAMPLES = 500


def noise_floor(ds: Dataset) -> dict:
    """How much two sampled answers to the same prompt differ in length (tokens)."""
    by_prompt: dict[str, list[int]] = {}
    for record in ds.requests:
        by_prompt.setdefault(record.prompt_id, []).append(record.num_output_tokens)
    diffs = [
        abs(a - b)
        for lengths in by_prompt.values()
        for i, a in enumerate(lengths)
        for b in lengths[i + 1 :]
    ]
    # best any prompt-only predictor can do: each answer vs. its own prompt's median
    spread = [
        abs(x - float(np.median(lengths)))
        for lengths in by_prompt.values()
        if len(lengths) > 1
        for x in lengths
    ]
    return {
        "num_prompts_with_pairs": sum(len(v) > 1 for v in by_prompt.values()),
        "mean_abs_pair_diff_tokens": float(np.mean(diffs)) if diffs else None,
        "mean_abs_dev_from_prompt_median_tokens": float(np.mean(spread)) if spread else None,
    }


def error_profile(pred: np.ndarray, ds: Dataset, name: str, source: str, seed: int = 0) -> dict:
    """The simulator's error profile: log((pred+1)/(true+1)) samples per progress bucket."""
    ratios = np.log((np.maximum(pred, 0.0) + 1.0) / (ds.remaining() + 1.0))
    bucket = np.clip(np.searchsorted(PROGRESS_EDGES, ds.progress(), side="right") - 1, 0, 9)
    rng = np.random.default_rng(seed)
    samples = []
    for b in range(len(PROGRESS_EDGES) - 1):
        values = ratios[bucket == b]
        if len(values) == 0:  # keep every bucket non-empty: borrow the nearest measured one
            values = ratios[np.abs(ds.progress() - (b + 0.5) / 10).argsort()[:50]]
        if len(values) > MAX_PROFILE_SAMPLES:
            values = rng.choice(values, MAX_PROFILE_SAMPLES, replace=False)
        samples.append([round(float(v), 4) for v in values])
    return {
        "format": PROFILE_FORMAT,
        "version": 1,
        "predictor": name,
        "source": source,
        "progress_bucket_edges": [round(float(e), 2) for e in PROGRESS_EDGES],
        "log_ratio_samples": samples,
    }


def plot_mae_vs_progress(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centers = (PROGRESS_EDGES[:-1] + PROGRESS_EDGES[1:]) / 2
    # bucket centres in tokens generated (the open last bucket drawn at 1.25x its lower edge)
    edges = GENERATED_EDGES.astype(float)
    generated = np.sqrt(np.maximum(edges[:-1], 1.0) * np.minimum(edges[1:], edges[-2] * 1.5))
    fig, (by_tokens, by_share) = plt.subplots(1, 2, figsize=(11, 4))
    for name, row in results.items():
        values = [np.nan if v is None else v for v in row["mae_by_generated"]]
        by_tokens.plot(generated, values, marker="o", label=name)
        values = [np.nan if v is None else v for v in row["mae_by_progress"]]
        by_share.plot(centers, values, marker="o", label=name)
    by_tokens.set_xscale("log")
    by_tokens.set_xlabel("tokens generated at the prediction")
    by_share.set_xlabel("decode progress (tokens generated / final length)")
    for ax in (by_tokens, by_share):
        ax.set_ylabel("MAE of remaining tokens")
    fig.suptitle("Remaining-length error as decoding goes on (held-out prompts)")
    by_tokens.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_eval(
    models_dir: Path,
    test: Dataset,
    out_dir: Path,
    decode_step_time_s: float | None,
    say: Callable[[str], None] = lambda _m: None,
) -> dict:
    """Evaluate the predictors in `models_dir` on `test`; write eval.json + plot + profile."""
    if not test.requests:
        raise StarserveError("no held-out requests to evaluate on")
    out_dir.mkdir(parents=True, exist_ok=True)
    predictors = load_predictor_set(models_dir)
    say("loading the MiniLM prompt encoder")
    encoder = MiniLMEncoder()
    say(f"predicting {test.num_points} points of {len(test.requests)} held-out requests")
    predictions = predict_all(predictors, test, encoder)
    say("timing each predictor (batch of 32)")
    costs = costs_us(predictors, test, encoder)
    params = parameter_counts(predictors, encoder)
    table = {}
    for name in predictors.names(test):
        fraction = costs[name] * 1e-6 / decode_step_time_s if decode_step_time_s else None
        table[name] = {
            **accuracy(predictions[name], test),
            "params": params[name],
            "cost_us": costs[name],
            "cost_fraction_of_step": fraction,
        }
    source = (
        f"{test.meta.get('model', 'unknown model')}; prompts {test.meta.get('prompt_files')}; "
        f"held-out test split ({len(test.requests)} answers); {date.today().isoformat()}"
    )
    result = {
        "predictors": table,
        "star_quantile_calibration": star_calibration(predictors, test),
        "by_progress": {name: row["by_progress"] for name, row in table.items()},
        "calibration": calibration(predictors, test),
        "noise_floor": noise_floor(test),
        "test_split": {
            "num_requests": len(test.requests),
            "num_prompts": len({r.prompt_id for r in test.requests}),
            "num_points": test.num_points,
            "share_capped": float(np.mean([r.finish_reason == "length" for r in test.requests])),
            "mean_output_tokens": float(test.output_lengths().mean()),
        },
        "decode_step_time_s": decode_step_time_s,
        "progress_bucket_edges": PROGRESS_EDGES.tolist(),
    }
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    profile = error_profile(predictions["star_mlp"], test, "star_mlp", source)
    (out_dir / "error_profile.json").write_text(json.dumps(profile) + "\n")
    plot_mae_vs_progress(table, out_dir / "mae_vs_progress.png")
    return result
