"""TRAIL (Shahout et al., ICLR 2025), as published, as a baseline.

A middle-layer hidden state goes through an MLP hidden -> 512 -> num_bins (ReLU), trained with
cross-entropy on the bin of the remaining length; the point prediction is the expected bin
midpoint. Predictions are refined by a Bayesian forward filter: between two predictions the
previous posterior is pushed through a Markov chain in which, per generated token, the mass of
bin i moves one bin down with probability 1 / width_i (remaining length shrinks one token per
token); the new classifier output then multiplies that prior and is renormalised.
Bins are equal-width over [0, cap] (the paper) or log-spaced (our variant for long tails).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

BIN_KINDS = ("equal", "log")


def bin_edges(kind: str, num_bins: int, max_output_tokens: int) -> np.ndarray:
    """num_bins + 1 increasing edges from 0 to the cap."""
    if kind == "equal":
        return np.linspace(0.0, max_output_tokens, num_bins + 1)
    if kind == "log":
        return np.geomspace(1.0, max_output_tokens + 1.0, num_bins + 1) - 1.0
    raise ValueError(f"unknown bin kind {kind!r}; expected one of {BIN_KINDS}")


def bin_index(remaining: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, remaining, side="right") - 1, 0, len(edges) - 2)


def transition_matrix(edges: np.ndarray, num_tokens: int) -> np.ndarray:
    """[from, to] probabilities after `num_tokens` generated tokens (rows sum to 1)."""
    widths = np.maximum(np.diff(edges), 1.0)
    num_bins = len(widths)
    one = np.eye(num_bins)
    for i in range(1, num_bins):
        move = min(1.0, 1.0 / widths[i])
        one[i, i] = 1.0 - move
        one[i, i - 1] = move
    return np.linalg.matrix_power(one, max(int(num_tokens), 0))


def filter_step(
    posterior: np.ndarray | None, likelihood: np.ndarray, transition: np.ndarray
) -> np.ndarray:
    """One Bayesian update: prior = posterior @ transition, times the classifier's output."""
    if posterior is None:
        return likelihood / likelihood.sum()
    prior = posterior @ transition
    joint = prior * likelihood
    total = joint.sum()
    if not np.isfinite(total) or total <= 1e-300:
        return likelihood / likelihood.sum()
    return joint / total


@dataclass(frozen=True, slots=True)
class TrailArchitecture:
    hidden_size: int
    bin_kind: str = "equal"
    num_bins: int = 10
    width: int = 512
    max_output_tokens: int = 512
    layer: int = 12


class TrailMLP(nn.Module):
    feature_mean: torch.Tensor
    feature_std: torch.Tensor

    def __init__(self, arch: TrailArchitecture) -> None:
        super().__init__()
        self.arch = arch
        self.net = nn.Sequential(
            nn.Linear(arch.hidden_size, arch.width), nn.ReLU(), nn.Linear(arch.width, arch.num_bins)
        )
        self.register_buffer("feature_mean", torch.zeros(arch.hidden_size))
        self.register_buffer("feature_std", torch.ones(arch.hidden_size))
        self.edges = bin_edges(arch.bin_kind, arch.num_bins, arch.max_output_tokens)
        self.midpoints = (self.edges[:-1] + self.edges[1:]) / 2

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net((hidden.float() - self.feature_mean) / self.feature_std)

    def probabilities(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.forward(hidden), dim=1)


def trail_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    hidden, labels = batch
    return F.cross_entropy(model(hidden), labels)


def filtered_predictions(
    model: TrailMLP, hidden: np.ndarray, point_request: np.ndarray, point_generated: np.ndarray
) -> np.ndarray:
    """Expected-midpoint prediction at every point, filtering along each request in order."""
    with torch.no_grad():
        probs = model.probabilities(torch.from_numpy(hidden)).double().numpy()
    predictions = np.empty(len(probs))
    cache: dict[int, np.ndarray] = {}
    posterior: np.ndarray | None = None
    for row in range(len(probs)):
        new_request = row == 0 or point_request[row] != point_request[row - 1]
        if new_request:
            posterior = filter_step(None, probs[row], np.eye(len(model.midpoints)))
        else:
            step = int(point_generated[row] - point_generated[row - 1])
            if step not in cache:
                cache[step] = transition_matrix(model.edges, step)
            posterior = filter_step(posterior, probs[row], cache[step])
        predictions[row] = float(posterior @ model.midpoints)
    return predictions
