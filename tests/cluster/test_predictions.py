"""The instance's prediction table: aged predictions, bounded by the request's token budget."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from starserve.cluster.predictions import PredictionTable


@dataclass
class _Tap:
    request_id: str
    hidden_last: torch.Tensor
    num_generated_tokens: int


class _ConstantPredictor:
    def predict(self, hidden: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        return torch.full((hidden.shape[0],), 300.0)


def test_predictions_age_and_never_exceed_the_budget() -> None:
    table = PredictionTable(_ConstantPredictor())
    table.observe([_Tap("a", torch.zeros(4), 10)])
    assert table.remaining("a", 10) == 300.0
    assert table.remaining("a", 50) == 260.0  # 40 tokens later, 40 fewer remain
    assert table.remaining("a", 50, budget=100) == 100.0  # max_tokens allows only 100 more
    assert table.remaining("a", 400) == 0.0
    assert table.remaining("unknown", 5, budget=7) is None
    table.forget("a")
    assert table.remaining("a", 10) is None
