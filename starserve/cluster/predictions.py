"""Per-request remaining-length predictions an instance keeps for its snapshots."""

from __future__ import annotations

from typing import Any

from starserve.mechanism.prediction import Prediction


class PredictionTable:
    """Runs the predictor on the engine's hidden-state taps and ages its answers.

    A prediction made when the request had generated g tokens says r remain; later, with g'
    generated, the estimate is max(0, r - (g' - g)) until the next tap refreshes it.
    Without a predictor every estimate is None (policies then fall back to current load).
    """

    def __init__(self, predictor: Any | None, refresh: bool = False):
        self.predictor = predictor
        self._table: dict[str, Prediction] = {}
        # online refit from finished requests (starserve.predictor.refresh), off by default
        self.refresher: Any | None = None
        if refresh and predictor is not None:
            from starserve.predictor.refresh import OnlineRefresher

            self.refresher = OnlineRefresher(predictor)

    def observe(self, outputs: list[Any]) -> None:
        if self.predictor is None:
            return
        tapped = [out for out in outputs if getattr(out, "hidden_last", None) is not None]
        if not tapped:
            return
        import torch

        hidden = torch.stack([out.hidden_last for out in tapped]).float()
        generated = torch.tensor([out.num_generated_tokens for out in tapped])
        predictor = self.predictor if self.refresher is None else self.refresher.current
        with torch.no_grad():
            remaining = predictor.predict(hidden, generated)
        if self.refresher is not None:
            ids = [out.request_id for out in tapped]
            self.refresher.observe(ids, hidden, generated, remaining)
        for out, value in zip(tapped, remaining.tolist(), strict=True):
            self._table[out.request_id] = Prediction(float(value), out.num_generated_tokens)

    def remaining(
        self, request_id: str, num_generated_tokens: int, budget: int | None = None
    ) -> float | None:
        """The aged prediction, never above `budget` (what max_tokens and the context still
        allow the request to generate: a known bound no prediction should exceed)."""
        pred = self._table.get(request_id)
        return None if pred is None else pred.aged(num_generated_tokens, budget)

    def get(self, request_id: str) -> Prediction | None:
        """The latest prediction as made (it travels with the request when it moves)."""
        return self._table.get(request_id)

    def seed(self, request_id: str, prediction: Prediction | None) -> None:
        """Adopt the prediction an arriving request carries (a later tap replaces it)."""
        if prediction is not None:
            self._table[request_id] = prediction

    def forget(self, request_id: str) -> None:
        self._table.pop(request_id, None)
        if self.refresher is not None:
            self.refresher.forget(request_id)

    def finish(self, out: Any) -> None:
        """A request ended here: its length labels its taps for the refresher, then forget."""
        if self.refresher is not None and out.finish_reason in ("stop", "length"):
            self.refresher.finish(out.request_id, out.num_generated_tokens)
        self.forget(out.request_id)

    def live_mae(self) -> float | None:
        return None if self.refresher is None else self.refresher.live_mae()
