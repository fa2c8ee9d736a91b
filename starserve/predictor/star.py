"""The STAR predictor: an MLP on the serving model's last-layer hidden state.

Faithful to STAR (arXiv 2510.13668): last-layer state in, remaining tokens out, L1 loss, a
4-layer MLP, re-run every k generated tokens. Scaled to SmolLM2's width 576: the paper's
3584 -> 2048-512-64-1 keeps widths ~0.57x, 0.25x, 0.125x of the previous layer; we keep the same
depth with 576 -> 256-64-16 (shrunk further because we have ~10^4, not 10^5, labelled points).
Beyond the paper: (1) quantile heads (pinball loss; the P50 head *is* the L1 regressor) built
non-crossing as a base plus positive increments; (2) log1p(tokens generated) as one extra input
(the runtime interface passes it anyway), so the model never has to rediscover the decode
position from the state; (3) an optional first linear layer fitted by PCA instead of gradient
descent (`projection_dim`): the standardised state is projected onto its top principal
directions of the training states. With ~2k answers to ~700 prompts (the paper had 10^5
points) the 576-wide input lets the MLP memorise training prompts: on our collection the plain
MLP did no better than the tokens-generated count alone, while 4-8 principal directions beat
every baseline (docs/predictor.md). `train_star` picks the dimension on the validation split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


@dataclass(frozen=True, slots=True)
class StarArchitecture:
    hidden_size: int
    widths: tuple[int, ...] = (256, 64, 16)
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    dropout: float = 0.1
    max_output_tokens: int = 512  # output scale (targets are divided by it)
    projection_dim: int | None = None  # None: the paper's MLP on the whole state
    # Conformal adjustment: per-quantile shifts in log1p(tokens) fitted on the validation split
    # so each quantile covers its nominal share there (`quantile_log_offsets`).
    calibrated: bool = False


class StarMLP(nn.Module):
    """hidden state [B, H] + tokens generated [B] -> remaining-token quantiles [B, Q]."""

    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    quantile_log_offsets: torch.Tensor  # only when arch.calibrated

    def __init__(self, arch: StarArchitecture) -> None:
        super().__init__()
        self.arch = arch
        layers: list[nn.Module] = []
        width_in = (arch.projection_dim or arch.hidden_size) + 1
        # Fitted by PCA in training (frozen): [hidden_size, projection_dim].
        self.projection = (
            nn.Parameter(torch.zeros(arch.hidden_size, arch.projection_dim), requires_grad=False)
            if arch.projection_dim
            else None
        )
        for width in arch.widths:
            layers += [nn.Linear(width_in, width), nn.GELU(), nn.Dropout(arch.dropout)]
            width_in = width
        layers.append(nn.Linear(width_in, len(arch.quantiles)))
        self.net = nn.Sequential(*layers)
        self.register_buffer("feature_mean", torch.zeros(arch.hidden_size))
        self.register_buffer("feature_std", torch.ones(arch.hidden_size))
        if arch.calibrated:
            self.register_buffer("quantile_log_offsets", torch.zeros(len(arch.quantiles)))

    def raw(self, hidden: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        """Quantiles in units of `max_output_tokens`, unclamped (for the training loss)."""
        x = (hidden.float() - self.feature_mean) / self.feature_std
        if self.projection is not None:
            x = x @ self.projection
        position = torch.log1p(generated.float()) / math.log1p(self.arch.max_output_tokens)
        out = self.net(torch.cat([x, position[:, None]], dim=1))
        mid = self.arch.quantiles.index(0.5) if 0.5 in self.arch.quantiles else 0
        base = out[:, mid : mid + 1]
        below = torch.flip(torch.cumsum(torch.flip(F.softplus(out[:, :mid]), [1]), 1), [1])
        above = torch.cumsum(F.softplus(out[:, mid + 1 :]), 1)
        return torch.cat([base - below, base, base + above], dim=1)

    def forward(self, hidden: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        """Remaining tokens per quantile, >= 0 (and non-decreasing across quantiles)."""
        out = (self.raw(hidden, generated) * self.arch.max_output_tokens).clamp_min(0.0)
        if not self.arch.calibrated:
            return out
        shifted = torch.expm1(torch.log1p(out) + self.quantile_log_offsets)
        return torch.cummax(shifted.clamp_min(0.0), dim=1).values


def conformal_log_offsets(
    predicted: torch.Tensor, truth: torch.Tensor, levels: tuple[float, ...]
) -> torch.Tensor:
    """Split-conformal shifts: for level q, the q-quantile of log1p(truth) - log1p(predicted_q),
    so that truth <= expm1(log1p(predicted_q) + shift) holds for a share q of the points."""
    residual = torch.log1p(truth.double()[:, None]) - torch.log1p(predicted.double())
    shifts = [torch.quantile(residual[:, i], level) for i, level in enumerate(levels)]
    return torch.stack(shifts).float()


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Mean quantile loss; for q = 0.5 it is half the L1 loss STAR trains with."""
    diff = target[:, None] - pred
    return torch.maximum(quantiles * diff, (quantiles - 1) * diff).mean()


def star_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    assert isinstance(model, StarMLP)
    hidden, generated, remaining = batch
    quantiles = torch.tensor(model.arch.quantiles)
    scale = model.arch.max_output_tokens
    return pinball_loss(model.raw(hidden, generated), remaining.float() / scale, quantiles)
