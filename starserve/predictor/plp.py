"""PLP with EGTP pooling (arXiv 2602.11812, ICLR'26), rebuilt from its description, a baseline.

EGTP (entropy-guided token pooling) summarises a sequence by pooling the served model's own
hidden states over its tokens, each weighted by the model's predictive entropy at that token
(softmax over the entropies: uncertain tokens, the branch points of an answer, count most).
PLP (progressive length prediction) re-predicts the *remaining* length at every step from the
pool over the tokens generated so far. The head regresses with soft labels: a distribution over
length bins trained against a Gaussian-smoothed one-hot of the true remaining length; the
prediction is read out of that distribution.

Our reading, where the description leaves room: the pool is over the generated tokens (the
engine taps every token of the answer, see pooling.entropy_pool); the head also sees the
current state and log1p(tokens generated), as every other hidden-state predictor here does (the
strongest version of the baseline); MLP (2H+1) -> 512 -> bins, ReLU, equal-width bins over
[0, cap]; the readout (distribution mean, the paper's regression, or median, MAE-optimal) is
picked on the validation split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from starserve.predictor.data import Dataset
from starserve.predictor.training import FitConfig, FitResult, fit, standardizer

READOUTS = ("mean", "median")


@dataclass(frozen=True, slots=True)
class PlpArchitecture:
    hidden_size: int
    width: int = 512
    num_bins: int = 64
    max_output_tokens: int = 2048
    label_sigma_bins: float = 1.0  # std of the soft label, in bins
    dropout: float = 0.1
    readout: str = "mean"


class PlpMLP(nn.Module):
    """(entropy pool [B, H], current state [B, H], generated [B]) -> remaining-length bins."""

    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    centers: torch.Tensor

    def __init__(self, arch: PlpArchitecture) -> None:
        super().__init__()
        self.arch = arch
        self.net = nn.Sequential(
            nn.Linear(2 * arch.hidden_size + 1, arch.width),
            nn.ReLU(),
            nn.Dropout(arch.dropout),
            nn.Linear(arch.width, arch.num_bins),
        )
        self.register_buffer("feature_mean", torch.zeros(2 * arch.hidden_size))
        self.register_buffer("feature_std", torch.ones(2 * arch.hidden_size))
        edges = torch.linspace(0.0, float(arch.max_output_tokens), arch.num_bins + 1)
        self.register_buffer("centers", (edges[:-1] + edges[1:]) / 2)

    def logits(
        self, pooled: torch.Tensor, hidden: torch.Tensor, generated: torch.Tensor
    ) -> torch.Tensor:
        x = (torch.cat([pooled.float(), hidden.float()], 1) - self.feature_mean) / self.feature_std
        position = torch.log1p(generated.float()) / math.log1p(self.arch.max_output_tokens)
        return self.net(torch.cat([x, position[:, None]], 1))

    def quantiles(self, probs: torch.Tensor, levels: tuple[float, ...]) -> torch.Tensor:
        """[B, len(levels)] remaining tokens at those levels of the bin distribution."""
        cdf = probs.cumsum(1)
        width = float(self.arch.max_output_tokens) / self.arch.num_bins
        out = []
        for level in levels:
            index = torch.searchsorted(cdf, torch.full((cdf.shape[0], 1), level)).clamp_max(
                self.arch.num_bins - 1
            )
            below = torch.where(index > 0, cdf.gather(1, (index - 1).clamp_min(0)), 0.0)
            inside = probs.gather(1, index).clamp_min(1e-12)
            fraction = ((level - below) / inside).clamp(0.0, 1.0)
            out.append(((index.float() + fraction) * width)[:, 0])
        return torch.stack(out, 1)

    def forward(
        self, pooled: torch.Tensor, hidden: torch.Tensor, generated: torch.Tensor
    ) -> torch.Tensor:
        """[B] predicted remaining tokens (>= 0) by the chosen readout."""
        probs = torch.softmax(self.logits(pooled, hidden, generated), 1)
        if self.arch.readout == "median":
            return self.quantiles(probs, (0.5,))[:, 0]
        return probs @ self.centers


def soft_labels(remaining: torch.Tensor, model: PlpMLP) -> torch.Tensor:
    """Gaussian-smoothed one-hot of each true remaining length over the bin centers."""
    width = float(model.arch.max_output_tokens) / model.arch.num_bins
    sigma = model.arch.label_sigma_bins * width
    target = remaining.float().clamp(0.0, float(model.arch.max_output_tokens))
    logits = -((model.centers[None, :] - target[:, None]) ** 2) / (2 * sigma**2)
    return torch.softmax(logits, 1)


def plp_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    assert isinstance(model, PlpMLP)
    pooled, hidden, generated, remaining = batch
    log_probs = F.log_softmax(model.logits(pooled, hidden, generated), 1)
    return -(soft_labels(remaining, model) * log_probs).sum(1).mean()


def plp_inputs(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(entropy pool, tap state, generated) tensors of a dataset with pools."""
    from starserve.predictor.pooling import entropy_pool

    return (
        torch.from_numpy(entropy_pool(ds)),
        torch.from_numpy(ds.hidden_last.astype(np.float32)),
        torch.from_numpy(ds.point_generated.astype(np.int64)),
    )


@torch.no_grad()
def predict_plp(model: PlpMLP, ds: Dataset) -> np.ndarray:
    model.eval()
    pooled, hidden, generated = plp_inputs(ds)
    return model(pooled, hidden, generated).numpy().astype(np.float64)


def train_plp(train: Dataset, val: Dataset, config: FitConfig) -> tuple[PlpMLP, FitResult]:
    """Fit on train (early stopping on validation), then pick the readout on validation MAE."""
    model = PlpMLP(PlpArchitecture(train.hidden_size, max_output_tokens=train.max_output_tokens))
    train_in, val_in = plp_inputs(train), plp_inputs(val)
    model.feature_mean, model.feature_std = standardizer(torch.cat(train_in[:2], 1))
    train_t = (*train_in, torch.from_numpy(train.remaining().astype(np.float32)))
    val_t = (*val_in, torch.from_numpy(val.remaining().astype(np.float32)))
    torch.manual_seed(config.seed)
    result = fit(model, plp_loss, train_t, val_t, config)
    truth = val.remaining()
    best, best_mae = model, math.inf
    for readout in READOUTS:
        candidate = PlpMLP(replace(model.arch, readout=readout))
        candidate.load_state_dict(model.state_dict())
        mae = float(np.abs(predict_plp(candidate, val) - truth).mean())
        if mae < best_mae:
            best, best_mae = candidate, mae
    return best.eval(), result
