"""One small training loop shared by every learned predictor (minibatch AdamW, early stopping)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(slots=True)
class FitConfig:
    max_epochs: int = 60
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience_epochs: int = 8  # stop when validation loss has not improved for this long
    seed: int = 0


@dataclass(slots=True)
class FitResult:
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    best_epoch: int = -1

    @property
    def best_val_loss(self) -> float:
        return self.val_losses[self.best_epoch]


LossFn = Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor]


def _mean_loss(model: nn.Module, loss_fn: LossFn, tensors: tuple[torch.Tensor, ...]) -> float:
    model.eval()
    with torch.no_grad():
        total, count = 0.0, tensors[0].shape[0]
        for start in range(0, count, 4096):
            batch = tuple(t[start : start + 4096] for t in tensors)
            total += float(loss_fn(model, batch)) * batch[0].shape[0]
    return total / max(count, 1)


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train: tuple[torch.Tensor, ...],
    val: tuple[torch.Tensor, ...],
    config: FitConfig,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> FitResult:
    """Train `model` in place; it ends with the weights of the best validation epoch."""
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    result = FitResult()
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    result.val_losses.append(_mean_loss(model, loss_fn, val))
    result.train_losses.append(_mean_loss(model, loss_fn, train))
    result.best_epoch = 0
    num_train = train[0].shape[0]
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        order = torch.randperm(num_train, generator=generator)
        for start in range(0, num_train, config.batch_size):
            index = order[start : start + config.batch_size]
            loss = loss_fn(model, tuple(t[index] for t in train))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        result.train_losses.append(_mean_loss(model, loss_fn, train))
        result.val_losses.append(_mean_loss(model, loss_fn, val))
        if on_epoch is not None:
            on_epoch(epoch, result.train_losses[-1], result.val_losses[-1])
        if result.val_losses[-1] < result.best_val_loss:
            result.best_epoch = epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch - result.best_epoch >= config.patience_epochs:
            break
    model.load_state_dict(best_state)
    model.eval()
    return result


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def standardizer(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std (std floored) of the training features."""
    mean = features.mean(dim=0)
    std = features.std(dim=0).clamp_min(1e-3)
    return mean, std
