"""What the serving runtime loads: the STAR predictor behind a small, stable interface."""

from __future__ import annotations

from pathlib import Path

import torch

from starserve.errors import StarserveError
from starserve.paths import ASSETS_DIR
from starserve.predictor.star import StarMLP
from starserve.predictor.store import load_module

DEFAULT_DIR = ASSETS_DIR / "predictor"
DEFAULT_NAME = "star_mlp"


class RemainingLengthPredictor:
    """Predicts each running request's remaining output tokens from its last-layer state.

    Call it on the engine's `RequestOutput.hidden_last` (stacked to [B, H]) together with the
    requests' `num_generated_tokens`; re-run every `interval` tokens.
    """

    def __init__(self, model: StarMLP, meta: dict) -> None:
        self.model = model.eval()
        self.meta = meta
        self.hidden_size: int = model.arch.hidden_size
        self.interval: int = int(meta.get("interval", 16))
        self.quantiles: tuple[float, ...] = model.arch.quantiles
        self.median_index = self.quantiles.index(0.5) if 0.5 in self.quantiles else 0

    def _check(self, hidden_last: torch.Tensor, num_generated_tokens: torch.Tensor) -> None:
        if hidden_last.dim() != 2 or hidden_last.shape[1] != self.hidden_size:
            raise ValueError(
                f"hidden_last must be [B, {self.hidden_size}], got {list(hidden_last.shape)}"
            )
        if num_generated_tokens.shape != (hidden_last.shape[0],):
            raise ValueError("num_generated_tokens must be [B] matching hidden_last")

    @torch.no_grad()
    def predict_quantiles(
        self, hidden_last: torch.Tensor, num_generated_tokens: torch.Tensor
    ) -> torch.Tensor:
        """[B, Q] remaining tokens at `self.quantiles`, each >= 0, non-decreasing in Q."""
        self._check(hidden_last, num_generated_tokens)
        return self.model(hidden_last.float(), num_generated_tokens)

    def predict(
        self, hidden_last: torch.Tensor, num_generated_tokens: torch.Tensor
    ) -> torch.Tensor:
        """[B] predicted remaining tokens (the median), >= 0."""
        return self.predict_quantiles(hidden_last, num_generated_tokens)[:, self.median_index]


def load_predictor(path: str | Path | None = None) -> RemainingLengthPredictor:
    """The STAR predictor in `path` (a directory or its .safetensors/.json); None = shipped one."""
    target = Path(path) if path is not None else DEFAULT_DIR
    directory, name = (target, DEFAULT_NAME) if target.is_dir() else (target.parent, target.stem)
    if not directory.is_dir():
        raise StarserveError(f"{target}: no such predictor directory or file")
    model, meta = load_module(directory, name)
    if not isinstance(model, StarMLP):
        raise StarserveError(f"{directory / name}.json: not a STAR predictor")
    return RemainingLengthPredictor(model, meta)
