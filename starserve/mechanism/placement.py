"""Prefill placement: which prefill instance takes an arriving request.

Pure functions of the prefill instances' queued prompt tokens (tokens sent to an instance and
not prefilled yet), chosen by name from `PREFILL_PLACEMENTS`; the simulator (`sim/cluster.py`)
and the live controller (`cluster/controller.py`) both call them, through `PrefillPlacer`,
with the same default. The live controller knows the queued tokens exactly: it sends every
prompt and hears when its prefill ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starserve.errors import StarserveError

# (queued prompt tokens per prefill instance, cursor) -> (chosen index, next cursor)
PlacementFn = Callable[[Sequence[int], int], tuple[int, int]]

DEFAULT_PREFILL_PLACEMENT = "least_queued_tokens"


def least_queued_tokens(queued_tokens: Sequence[int], cursor: int) -> tuple[int, int]:
    """The instance with the fewest queued prompt tokens (ties: the lowest index): the
    shortest wait for the first token under FCFS chunked prefill."""
    best = min(range(len(queued_tokens)), key=lambda i: (queued_tokens[i], i))
    return best, cursor


def round_robin(queued_tokens: Sequence[int], cursor: int) -> tuple[int, int]:
    """Instances in turn, blind to their queues."""
    return cursor % len(queued_tokens), cursor + 1


PREFILL_PLACEMENTS: dict[str, PlacementFn] = {
    "least_queued_tokens": least_queued_tokens,
    "round_robin": round_robin,
}


def get_placement(name: str) -> PlacementFn:
    """The named placement; an unknown name is a one-line `StarserveError`."""
    if name not in PREFILL_PLACEMENTS:
        choices = ", ".join(PREFILL_PLACEMENTS)
        raise StarserveError(f"unknown prefill placement {name!r}; choose from {choices}")
    return PREFILL_PLACEMENTS[name]


@dataclass(slots=True)
class PrefillPlacer:
    """A placement with its cursor (one per simulation or controller)."""

    place: PlacementFn
    cursor: int = 0

    @classmethod
    def named(cls, name: str = DEFAULT_PREFILL_PLACEMENT) -> PrefillPlacer:
        return cls(get_placement(name))

    def choose(self, queued_tokens: Sequence[int]) -> int:
        """The index of the prefill instance for the next request."""
        if not queued_tokens:
            raise ValueError("placement needs at least one prefill instance")
        index, self.cursor = self.place(queued_tokens, self.cursor)
        return index
