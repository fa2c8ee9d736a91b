"""A remaining-length prediction as it travels with its request (hand-off, migration).

Made when the request had generated `at_generated_tokens` tokens, it says `remaining_tokens`
remain; with g generated later it ages to max(0, remaining - (g - at_generated)) until a newer
prediction replaces it. Instances store and forward it as is and age it when they read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Prediction:
    remaining_tokens: float
    at_generated_tokens: int

    def aged(self, num_generated_tokens: int, budget: int | None = None) -> float:
        """The remaining tokens at `num_generated_tokens`, never above `budget` (what
        max_tokens and the context still allow: a bound no prediction should exceed)."""
        generated_since = num_generated_tokens - self.at_generated_tokens
        aged = max(0.0, self.remaining_tokens - generated_since)
        return aged if budget is None else min(aged, float(budget))
