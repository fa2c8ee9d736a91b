"""The refresh bench: a predictor trained on chat prompts, then served math prompts.

Both arms serve the same math requests in the same (seeded) order, one request finishing after
another: the static arm keeps the chat-trained predictor; the refresh arm runs
`OnlineRefresher` (synchronous refits, so the result does not depend on thread timing), whose
swaps take effect for the requests that come after them. MAE is measured per served point
against the true remaining length; `refresh_mae_ratio` = refresh MAE / static MAE over the
second half of the stream (after the refresher has seen the first half).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from starserve.errors import StarserveError
from starserve.predictor.data import Dataset, split_of
from starserve.predictor.refresh import OnlineRefresher, RefreshConfig
from starserve.predictor.runtime import RemainingLengthPredictor
from starserve.predictor.train import train_star
from starserve.predictor.training import FitConfig

CHAT_SETS = ("alpaca_eval_chat", "self_instruct_seed", "question_v0.1", "question_v2.0")
MATH_SETS = ("math500", "aime24", "amc23")


def _subset(ds: Dataset, sets: tuple[str, ...]) -> Dataset:
    return ds.subset(np.array([r.prompt_set in sets for r in ds.requests], dtype=bool))


def _serve(refresher: OnlineRefresher | None, predictor: RemainingLengthPredictor,
           ds: Dataset, order: np.ndarray) -> np.ndarray:  # fmt: skip
    """Per served request (in `order`): [sum of absolute errors of its points, points]."""
    per_request = []
    for index in order:
        rows = np.flatnonzero(ds.point_request == index)
        hidden = torch.from_numpy(ds.hidden_last[rows].astype(np.float32))
        generated = torch.from_numpy(ds.point_generated[rows].astype(np.int64))
        model = predictor if refresher is None else refresher.current
        predicted = model.predict(hidden, generated)
        record = ds.requests[index]
        truth = record.num_output_tokens - generated.numpy()
        per_request.append((float(np.abs(predicted.numpy() - truth).sum()), len(rows)))
        if refresher is not None:
            rid = f"{record.prompt_id}#{record.sample_index}"
            refresher.observe([rid] * len(rows), hidden, generated, predicted)
            refresher.finish(rid, record.num_output_tokens)
    return np.asarray(per_request, dtype=np.float64)


def _mae(errors: np.ndarray, start: int, stop: int) -> float:
    part = errors[start:stop]
    return float(part[:, 0].sum() / max(part[:, 1].sum(), 1.0))


def refresh_shift(ds: Dataset, fit_config: FitConfig, refresh: RefreshConfig,
                  seed: int = 0, windows: int = 8) -> dict:  # fmt: skip
    """Train STAR on the chat prompts of `ds`, serve its math prompts with and without refresh."""
    chat, math = _subset(ds, CHAT_SETS), _subset(ds, MATH_SETS)
    if len(math.requests) < 4 or not chat.requests:
        raise StarserveError("the refresh bench needs chat and (at least 4) math answers")
    val_mask = np.array([split_of(r.prompt_id) == "val" for r in chat.requests], dtype=bool)
    model, _ = train_star(chat.subset(~val_mask), chat.subset(val_mask), fit_config)
    base = RemainingLengthPredictor(model, {"interval": int(ds.meta.get("interval", 16))})
    order = np.random.default_rng(seed).permutation(len(math.requests))
    static = _serve(None, base, math, order)
    refresher = OnlineRefresher(base, replace(refresh, background=False, seed=seed))
    refreshed = _serve(refresher, base, math, order)
    half, count = len(order) // 2, len(order)
    edges = np.linspace(0, count, min(windows, count) + 1).astype(int)
    after, before = _mae(refreshed, half, count), _mae(static, half, count)
    return {
        "refresh_mae_ratio": after / max(before, 1e-9),
        "static_mae_second_half": before,
        "refresh_mae_second_half": after,
        "mae_over_time": {
            "requests_served": edges[1:].tolist(),
            "static": [_mae(static, a, b) for a, b in zip(edges, edges[1:], strict=False)],
            "refresh": [_mae(refreshed, a, b) for a, b in zip(edges, edges[1:], strict=False)],
        },
        "num_chat_train_requests": int((~val_mask).sum()),
        "num_math_served_requests": len(order),
        "refits": len(refresher.outcomes),
        "swaps": sum(o.swapped for o in refresher.outcomes),
    }
