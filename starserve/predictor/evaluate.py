"""Held-out evaluation of STAR and the baselines: accuracy, calibration, size and cost."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from starserve.errors import StarserveError
from starserve.predictor.baselines import (
    MeanResidualLife,
    MiniLMEncoder,
    PromptLengthHead,
    prompt_only_remaining,
)
from starserve.predictor.data import Dataset
from starserve.predictor.plp import PlpMLP, plp_inputs
from starserve.predictor.star import StarMLP
from starserve.predictor.store import load_mean_residual, load_module
from starserve.predictor.trail import TrailMLP, filtered_predictions, transition_matrix
from starserve.predictor.train import TRAIL_VARIANTS, prompt_embeddings
from starserve.predictor.training import count_parameters

PREDICTOR_NAMES = (
    "star_mlp",
    "plp",
    "prompt_only_minilm",
    "trail",
    "trail_log_bins",
    "mean_residual",
)
PROGRESS_EDGES = np.linspace(0.0, 1.0, 11)
GENERATED_EDGES = np.array([0, 32, 64, 128, 256, 512, 1024, 1536, 1 << 30])
# eval.json `by_progress`: MAE per bucket of tokens generated at the prediction point
PROGRESS_BUCKETS = {"0-64": (0, 64), "64-256": (64, 256), "256-1024": (256, 1024)}
PROGRESS_BUCKETS[">=1024"] = (1024, 1 << 30)
COST_BATCH = 32


@dataclass(slots=True)
class PredictorSet:
    """Everything `train` wrote, loaded back."""

    star: StarMLP
    trails: dict[str, TrailMLP]
    prompt_head: PromptLengthHead
    mean_residual: MeanResidualLife
    meta: dict
    plp: PlpMLP | None = None  # absent from predictor sets trained before PLP

    def names(self, ds: Dataset) -> list[str]:
        """The predictors that can run on `ds` (PLP needs its token-entropy pools)."""
        usable = self.plp is not None and "pool_entropy" in ds.pools
        return [name for name in PREDICTOR_NAMES if name != "plp" or usable]


def load_predictor_set(models_dir: Path) -> PredictorSet:
    star, meta = load_module(models_dir, "star_mlp")
    trails = {name: load_module(models_dir, name)[0] for name in TRAIL_VARIANTS}
    head, _ = load_module(models_dir, "prompt_only_minilm")
    assert isinstance(star, StarMLP) and isinstance(head, PromptLengthHead)
    trail_models = {name: m for name, m in trails.items() if isinstance(m, TrailMLP)}
    plp = None
    if (models_dir / "plp.json").is_file():
        loaded, _ = load_module(models_dir, "plp")
        plp = loaded if isinstance(loaded, PlpMLP) else None
    return PredictorSet(star, trail_models, head, load_mean_residual(models_dir), meta, plp)


def predict_all(ps: PredictorSet, ds: Dataset, encoder: MiniLMEncoder) -> dict[str, np.ndarray]:
    """Predicted remaining tokens of every predictor at every point of `ds`."""
    if ds.hidden_middle is None:
        raise StarserveError("the data has no middle-layer states; TRAIL needs them")
    hidden = torch.from_numpy(ds.hidden_last.astype(np.float32))
    generated = torch.from_numpy(ds.point_generated.astype(np.int64))
    with torch.no_grad():
        star_q = ps.star(hidden, generated).numpy()
        totals = ps.prompt_head(prompt_embeddings(ds, encoder)).numpy()
    median = ps.star.arch.quantiles.index(0.5)
    middle = ds.hidden_middle.astype(np.float32)
    out = {
        "star_mlp": star_q[:, median],
        "prompt_only_minilm": prompt_only_remaining(totals[ds.point_request], ds.point_generated),
        "mean_residual": ps.mean_residual.predict(ds.point_generated),
    }
    for name, model in ps.trails.items():
        out[name] = filtered_predictions(model, middle, ds.point_request, ds.point_generated)
    if ps.plp is not None and "plp" in ps.names(ds):
        with torch.no_grad():
            out["plp"] = ps.plp(*plp_inputs(ds)).numpy().astype(np.float64)
    return out


def by_progress(errors: np.ndarray, generated: np.ndarray) -> dict[str, float | None]:
    """MAE per bucket of tokens generated (PROGRESS_BUCKETS); None where a bucket is empty."""
    out: dict[str, float | None] = {}
    for name, (low, high) in PROGRESS_BUCKETS.items():
        rows = (generated >= low) & (generated < high)
        out[name] = float(errors[rows].mean()) if np.any(rows) else None
    return out


def bucket_mae(errors: np.ndarray, values: np.ndarray, edges: np.ndarray) -> list[float | None]:
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    return [
        float(errors[index == b].mean()) if np.any(index == b) else None
        for b in range(len(edges) - 1)
    ]


def accuracy(pred: np.ndarray, ds: Dataset) -> dict:
    truth = ds.remaining().astype(np.float64)
    errors = np.abs(pred - truth)
    per_request = np.bincount(ds.point_request, weights=errors) / np.maximum(
        np.bincount(ds.point_request), 1
    )
    return {
        "mae": float(errors.mean()),
        "mae_per_request": float(per_request[np.bincount(ds.point_request) > 0].mean()),
        "relative_error": float(errors.sum() / max(truth.sum(), 1.0)),
        "mae_by_progress": bucket_mae(errors, ds.progress(), PROGRESS_EDGES),
        "mae_by_generated": bucket_mae(errors, ds.point_generated, GENERATED_EDGES),
        "by_progress": by_progress(errors, ds.point_generated),
        "mae_from_256": float(errors[ds.point_generated >= 256].mean())
        if np.any(ds.point_generated >= 256)
        else None,
    }


def coverage(quantiles: np.ndarray, levels: tuple[float, ...], ds: Dataset) -> dict[str, float]:
    """Share of true remaining lengths at or below each predicted quantile."""
    truth = ds.remaining()
    return {
        f"P{round(level * 100)}": float(np.mean(truth <= quantiles[:, i]))
        for i, level in enumerate(levels)
    }


def star_calibration(ps: PredictorSet, ds: Dataset) -> dict[str, float]:
    """Fraction of true remaining lengths at or below each predicted quantile."""
    hidden = torch.from_numpy(ds.hidden_last.astype(np.float32))
    with torch.no_grad():
        q = ps.star(hidden, torch.from_numpy(ds.point_generated.astype(np.int64))).numpy()
    return coverage(q, ps.star.arch.quantiles, ds)


def calibration(ps: PredictorSet, ds: Dataset) -> dict:
    """eval.json `calibration`: each quantile predictor's coverage and worst error (points)."""
    out: dict = {"star_mlp": star_calibration(ps, ds)}
    if ps.plp is not None and "plp" in ps.names(ds):
        levels = ps.star.arch.quantiles
        with torch.no_grad():
            probs = torch.softmax(ps.plp.logits(*plp_inputs(ds)), 1)
            out["plp"] = coverage(ps.plp.quantiles(probs, levels).numpy(), levels, ds)
    for name in list(out):
        worst = max(abs(100 * share - int(key[1:])) for key, share in out[name].items())
        out[name] = {**out[name], "max_abs_error_points": round(worst, 2)}
    return out


def time_us(fn: Callable[[], object], repeats: int = 30) -> float:
    """Median wall time of `fn` in microseconds (after one warm-up call)."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples) * 1e6)


def costs_us(ps: PredictorSet, ds: Dataset, encoder: MiniLMEncoder) -> dict[str, float]:
    """CPU time of one prediction call for a batch of 32 requests, per predictor."""
    rows = np.arange(COST_BATCH) % ds.num_points
    hidden = torch.from_numpy(ds.hidden_last[rows].astype(np.float32))
    generated = torch.from_numpy(ds.point_generated[rows].astype(np.int64))
    prompts = [ds.requests[i].prompt for i in ds.point_request[rows]]
    middle = torch.from_numpy(
        (ds.hidden_middle if ds.hidden_middle is not None else ds.hidden_last)[rows].astype(
            np.float32
        )
    )
    prior = np.full((COST_BATCH, 10), 0.1)

    def trail_call(model: TrailMLP) -> Callable[[], object]:
        step = transition_matrix(model.edges, 16)

        def call() -> object:
            with torch.no_grad():
                probs = model.probabilities(middle).double().numpy()
            post = (prior @ step) * probs
            post /= post.sum(1, keepdims=True)
            return post @ model.midpoints

        return call

    def prompt_call() -> object:
        with torch.no_grad():
            return ps.prompt_head(encoder.encode(prompts, batch_size=COST_BATCH))

    with torch.no_grad():
        result = {
            "star_mlp": time_us(lambda: ps.star(hidden, generated)),
            "prompt_only_minilm": time_us(prompt_call, repeats=5),
            "mean_residual": time_us(lambda: ps.mean_residual.predict(generated.numpy())),
        }
    for name, model in ps.trails.items():
        result[name] = time_us(trail_call(model))
    if ps.plp is not None:
        plp = ps.plp
        with torch.no_grad():
            result["plp"] = time_us(lambda: plp(middle, hidden, generated))
    return result


def parameter_counts(ps: PredictorSet, encoder: MiniLMEncoder) -> dict[str, int]:
    counts = {name: count_parameters(m) for name, m in ps.trails.items()}
    counts["star_mlp"] = count_parameters(ps.star)
    counts["prompt_only_minilm"] = encoder.num_parameters + count_parameters(ps.prompt_head)
    counts["mean_residual"] = 0  # a lookup table of training statistics, nothing learned
    if ps.plp is not None:
        counts["plp"] = count_parameters(ps.plp)
    return counts
