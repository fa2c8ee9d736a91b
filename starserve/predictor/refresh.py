"""Online refresh: refit the STAR predictor on the served model's own finished requests.

While serving, every tap's hidden state and prediction is kept per request; when the request
finishes its true remaining lengths label those points. The labelled points of finished
requests form a bounded buffer. Every `min_new_requests` finished requests a background thread
refits a copy of the current predictor on the buffer (the output head only, or the whole MLP),
compares it with the current one on a held-back slice of the buffer (whole requests, picked by
a hash of the request id, never trained on) and swaps it in only when its MAE there is lower.
The live MAE (the served predictions against what then happened, over the most recent labelled
points) is what Prometheus shows. No Ray here: `cluster/predictions.py` feeds it.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from starserve.predictor.runtime import RemainingLengthPredictor
from starserve.predictor.star import StarMLP, star_loss
from starserve.predictor.training import FitConfig, fit


@dataclass(frozen=True, slots=True)
class RefreshConfig:
    min_new_requests: int = 32  # finished requests between two refits
    min_requests: int = 24  # labelled requests in the buffer before the first refit
    max_points: int = 20000  # newest labelled points kept
    holdout_share: float = 0.25  # of buffered requests, held back to judge a candidate
    scope: Literal["head", "all"] = "head"  # refit the output layer only, or the whole MLP
    max_epochs: int = 40
    learning_rate: float = 1e-3
    live_window_points: int = 2000  # live MAE over this many newest labelled points
    background: bool = True  # refit in a daemon thread (False: inside `finish`, for benches)
    seed: int = 0


@dataclass(slots=True)
class _Pending:
    hidden: list[np.ndarray] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    predicted: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RefitOutcome:
    swapped: bool
    candidate_mae: float
    current_mae: float
    num_train_points: int
    num_holdout_points: int


def is_held_back(request_id: str, share: float) -> bool:
    digest = hashlib.sha256(f"refresh:{request_id}".encode()).hexdigest()
    return int(digest[:8], 16) / 0x100000000 < share


class OnlineRefresher:
    """Keeps labelled points of finished requests and refits the predictor from them."""

    def __init__(self, predictor: RemainingLengthPredictor, config: RefreshConfig | None = None):
        self.config = config or RefreshConfig()
        self._current = predictor
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._points: deque[tuple[np.ndarray, int, int, bool]] = deque(
            maxlen=self.config.max_points
        )
        self._live: deque[float] = deque(maxlen=self.config.live_window_points)
        self._since_refit = 0
        self._num_requests = 0
        self._thread: threading.Thread | None = None
        self.outcomes: list[RefitOutcome] = []

    @property
    def current(self) -> RemainingLengthPredictor:
        """The predictor to serve with (swapped atomically by a successful refit)."""
        return self._current

    def observe(
        self,
        request_ids: list[str],
        hidden: torch.Tensor,
        generated: torch.Tensor,
        predicted: torch.Tensor,
    ) -> None:
        """One batch of taps and the predictions served for them."""
        states = hidden.detach().to(torch.float16).numpy()
        with self._lock:
            for row, rid in enumerate(request_ids):
                pending = self._pending.setdefault(rid, _Pending())
                pending.hidden.append(states[row])
                pending.generated.append(int(generated[row]))
                pending.predicted.append(float(predicted[row]))

    def forget(self, request_id: str) -> None:
        """A request that ended without a usable label (aborted, migrated away)."""
        with self._lock:
            self._pending.pop(request_id, None)

    def finish(self, request_id: str, num_output_tokens: int) -> None:
        """Label a finished request's points; maybe start a refit."""
        with self._lock:
            pending = self._pending.pop(request_id, None)
            if pending is None:
                return
            held = is_held_back(request_id, self.config.holdout_share)
            for state, g, pred in zip(
                pending.hidden, pending.generated, pending.predicted, strict=True
            ):
                remaining = max(num_output_tokens - g, 0)
                self._points.append((state, g, remaining, held))
                self._live.append(abs(pred - remaining))
            self._since_refit += 1
            self._num_requests += 1
            due = (
                self._since_refit >= self.config.min_new_requests
                and self._num_requests >= self.config.min_requests
                and (self._thread is None or not self._thread.is_alive())
            )
            if due:
                self._since_refit = 0
        if due:
            if self.config.background:
                self._thread = threading.Thread(target=self.refit, name="predictor-refresh")
                self._thread.daemon = True
                self._thread.start()
            else:
                self.refit()

    def live_mae(self) -> float | None:
        """MAE (tokens) of the served predictions over the newest labelled points."""
        with self._lock:
            return float(np.mean(self._live)) if self._live else None

    def wait(self, timeout_s: float | None = None) -> None:
        """Wait for a running background refit (tests, shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    def refit(self) -> RefitOutcome | None:
        """Fit a candidate on the buffer's training part; swap it in if it wins on the rest."""
        with self._lock:
            points = list(self._points)
        train = [p for p in points if not p[3]]
        held = [p for p in points if p[3]]
        if not train or not held:
            return None
        current = self._current
        candidate = refit_copy(current.model, _tensors(train), _tensors(held), self.config)
        held_t = _tensors(held)
        current_mae = _mae(current.model, held_t)
        candidate_mae = _mae(candidate, held_t)
        swapped = candidate_mae < current_mae
        if swapped:
            self._current = RemainingLengthPredictor(candidate, current.meta)
        outcome = RefitOutcome(swapped, candidate_mae, current_mae, len(train), len(held))
        self.outcomes.append(outcome)
        return outcome


def _tensors(points: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(np.stack([p[0] for p in points]).astype(np.float32)),
        torch.tensor([p[1] for p in points], dtype=torch.int64),
        torch.tensor([p[2] for p in points], dtype=torch.float32),
    )


@torch.no_grad()
def _mae(model: StarMLP, tensors: tuple[torch.Tensor, ...]) -> float:
    hidden, generated, remaining = tensors
    model.eval()
    median = model.arch.quantiles.index(0.5) if 0.5 in model.arch.quantiles else 0
    return float((model(hidden, generated)[:, median] - remaining).abs().mean())


def refit_copy(
    model: StarMLP,
    train: tuple[torch.Tensor, ...],
    held: tuple[torch.Tensor, ...],
    config: RefreshConfig,
) -> StarMLP:
    del held
    """A copy of `model` trained further on `train` for a fixed number of epochs.

    `held` is not looked at (it judges the result): early stopping on it would let the judging
    slice pick the candidate.
    """
    candidate = copy.deepcopy(model)
    output = candidate.net[-1]
    for param in candidate.parameters():
        param.requires_grad_(config.scope == "all")
    if config.scope == "head":
        for param in output.parameters():
            param.requires_grad_(True)
    if candidate.projection is not None:
        candidate.projection.requires_grad_(False)  # the PCA basis stays fitted
    fit_config = FitConfig(
        max_epochs=config.max_epochs, learning_rate=config.learning_rate, seed=config.seed,
        weight_decay=1e-2, patience_epochs=config.max_epochs + 1,
    )  # fmt: skip
    torch.manual_seed(config.seed)
    fit(candidate, star_loss, train, train, fit_config)
    return candidate.eval()
