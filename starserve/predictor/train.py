"""Train STAR and every baseline on a collection's train split (validation for early stopping)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from starserve.errors import StarserveError
from starserve.predictor.baselines import (
    MeanResidualLife,
    MiniLMEncoder,
    PromptLengthHead,
    prompt_head_loss,
)
from starserve.predictor.data import Dataset
from starserve.predictor.plp import PlpMLP, train_plp
from starserve.predictor.star import StarArchitecture, StarMLP, conformal_log_offsets, star_loss
from starserve.predictor.store import save_mean_residual, save_module
from starserve.predictor.trail import TrailArchitecture, TrailMLP, bin_index, trail_loss
from starserve.predictor.training import FitConfig, FitResult, fit, standardizer

TRAIL_VARIANTS = {"trail": "equal", "trail_log_bins": "log"}
Progress = Callable[[str], None]


@dataclass(slots=True)
class TrainedPredictors:
    star: StarMLP
    trails: dict[str, TrailMLP]
    prompt_head: PromptLengthHead
    mean_residual: MeanResidualLife
    fits: dict[str, FitResult] = field(default_factory=dict)
    plp: PlpMLP | None = None  # only for collections with token-entropy pools


def _tensors(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(ds.hidden_last.astype(np.float32)),
        torch.from_numpy(ds.point_generated.astype(np.int64)),
        torch.from_numpy(ds.remaining().astype(np.float32)),
    )


STAR_PROJECTION_DIMS = (4, 8, 16, 32)  # principal directions tried; validation picks one


def train_star(
    train: Dataset, val: Dataset, config: FitConfig, arch: StarArchitecture | None = None
) -> tuple[StarMLP, FitResult]:
    """Train with `arch`, or pick the projection dimension on validation loss when None."""
    if arch is not None:
        return _train_star_once(train, val, config, arch)
    candidates = [
        _train_star_once(train, val, config, _star_arch(train, dim)) for dim in STAR_PROJECTION_DIMS
    ]
    model, result = min(candidates, key=lambda pair: pair[1].best_val_loss)
    return calibrate_star(model, val), result


def calibrate_star(model: StarMLP, val: Dataset) -> StarMLP:
    """The same model with conformal quantile shifts fitted on the validation split.

    Reusing the early-stopping split for the shifts costs a little honesty in the validation
    figures only; the test split, where calibration is judged, stays unseen.
    """
    calibrated = StarMLP(replace(model.arch, calibrated=True))
    state = dict(model.state_dict(), quantile_log_offsets=torch.zeros(len(model.arch.quantiles)))
    calibrated.load_state_dict(state)
    calibrated.eval()
    hidden, generated, remaining = _tensors(val)
    with torch.no_grad():
        predicted = calibrated(hidden, generated)
    calibrated.quantile_log_offsets = conformal_log_offsets(
        predicted, remaining, model.arch.quantiles
    )
    return calibrated


def _star_arch(train: Dataset, projection_dim: int | None) -> StarArchitecture:
    # Heavier regularisation than the paper's (dropout 0.2, weight decay 1e-2 via the config):
    # a few thousand answers, not 10^5 points.
    return StarArchitecture(
        train.hidden_size,
        dropout=0.2,
        max_output_tokens=train.max_output_tokens,
        projection_dim=projection_dim,
    )


def _train_star_once(
    train: Dataset, val: Dataset, config: FitConfig, arch: StarArchitecture
) -> tuple[StarMLP, FitResult]:
    model = StarMLP(arch)
    train_t, val_t = _tensors(train), _tensors(val)
    model.feature_mean, model.feature_std = standardizer(train_t[0])
    if model.projection is not None:
        standardized = (train_t[0] - model.feature_mean) / model.feature_std
        torch.manual_seed(config.seed)  # pca_lowrank is randomised
        _, _, basis = torch.pca_lowrank(standardized, q=arch.projection_dim, center=False)
        model.projection.data = basis[:, : arch.projection_dim].contiguous()
    torch.manual_seed(config.seed)
    return model, fit(model, star_loss, train_t, val_t, replace(config, weight_decay=1e-2))


def train_trail(
    train: Dataset, val: Dataset, bin_kind: str, config: FitConfig
) -> tuple[TrailMLP, FitResult]:
    if train.hidden_middle is None or val.hidden_middle is None:
        raise StarserveError("the data has no middle-layer states; TRAIL needs them")
    layer = int(train.meta.get("middle_layer", -1))
    arch = TrailArchitecture(
        train.hidden_size, bin_kind=bin_kind, max_output_tokens=train.max_output_tokens, layer=layer
    )
    model = TrailMLP(arch)

    def tensors(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        assert ds.hidden_middle is not None
        labels = bin_index(ds.remaining(), model.edges)
        return torch.from_numpy(ds.hidden_middle.astype(np.float32)), torch.from_numpy(labels)

    train_t, val_t = tensors(train), tensors(val)
    model.feature_mean, model.feature_std = standardizer(train_t[0])
    torch.manual_seed(config.seed)
    return model, fit(model, trail_loss, train_t, val_t, config)


def prompt_embeddings(ds: Dataset, encoder: MiniLMEncoder) -> torch.Tensor:
    """[R, 384] embedding of each request's prompt (each distinct prompt encoded once)."""
    unique = sorted({r.prompt_id: r.prompt for r in ds.requests}.items())
    index = {pid: i for i, (pid, _) in enumerate(unique)}
    table = encoder.encode([text for _, text in unique])
    return table[[index[r.prompt_id] for r in ds.requests]]


def train_prompt_head(
    train: Dataset, val: Dataset, encoder: MiniLMEncoder, config: FitConfig
) -> tuple[PromptLengthHead, FitResult]:
    model = PromptLengthHead(max_output_tokens=train.max_output_tokens)

    def tensors(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        return prompt_embeddings(ds, encoder), torch.from_numpy(ds.output_lengths()).float()

    torch.manual_seed(config.seed)
    return model, fit(model, prompt_head_loss, tensors(train), tensors(val), config)


def train_all(
    train: Dataset, val: Dataset, config: FitConfig, progress: Progress | None = None
) -> TrainedPredictors:
    say = progress or (lambda _msg: None)
    if not train.requests or not val.requests:
        raise StarserveError("need requests in both the train and the validation split")
    say("mean residual life")
    mean_residual = MeanResidualLife(train.output_lengths(), train.max_output_tokens)
    say("STAR MLP")
    star, star_fit = train_star(train, val, config)
    fits = {"star_mlp": star_fit}
    trails = {}
    for name, kind in TRAIL_VARIANTS.items():
        say(f"TRAIL ({kind} bins)")
        trails[name], fits[name] = train_trail(train, val, kind, config)
    plp = None
    if "pool_entropy" in train.pools and "pool_entropy" in val.pools:
        say("PLP (entropy-guided token pooling)")
        plp, fits["plp"] = train_plp(train, val, config)
    else:
        say("PLP skipped: the data has no token-entropy pools")
    say("prompt-only MiniLM head")
    prompt_config = replace(config, batch_size=64, max_epochs=200)
    head, fits["prompt_only_minilm"] = train_prompt_head(train, val, MiniLMEncoder(), prompt_config)
    return TrainedPredictors(star, trails, head, mean_residual, fits, plp)


def data_summary(train: Dataset, val: Dataset) -> dict:
    return {
        "collection": {
            k: train.meta.get(k) for k in ("model", "prompt_files", "temperature", "top_p")
        },
        "num_train_requests": len(train.requests),
        "num_train_prompts": len({r.prompt_id for r in train.requests}),
        "num_train_points": train.num_points,
        "num_val_requests": len(val.requests),
        "share_capped": float(np.mean([r.finish_reason == "length" for r in train.requests])),
    }


def save_all(out_dir: Path, trained: TrainedPredictors, train: Dataset, val: Dataset) -> None:
    """Write every trained predictor to `out_dir` (the STAR file is what the runtime loads)."""
    common = {
        "model": train.meta.get("model", "unknown"),
        "hidden_size": train.hidden_size,
        "interval": int(train.meta.get("interval", 16)),
        "max_output_tokens": train.max_output_tokens,
        "training_data": data_summary(train, val),
    }
    modules: dict[str, nn.Module] = {"star_mlp": trained.star, **trained.trails}
    modules["prompt_only_minilm"] = trained.prompt_head
    if trained.plp is not None:
        modules["plp"] = trained.plp
    for name, module in modules.items():
        fit_result = trained.fits.get(name)
        extra = {}
        if fit_result is not None:
            extra = {"best_epoch": fit_result.best_epoch, "best_val_loss": fit_result.best_val_loss}
        save_module(out_dir, name, module, {**common, **extra})
    save_mean_residual(out_dir, trained.mean_residual, common)
