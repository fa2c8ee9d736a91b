"""A request inside the engine."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from starserve.engine.outputs import DetokenizerState
from starserve.engine.params import SamplingParams


class SequenceStatus(enum.IntEnum):
    WAITING = 0  # queued (new, or preempted and to be recomputed)
    RUNNING = 1  # holds blocks, scheduled every step
    PAUSED = 2  # holds blocks, not scheduled (final stage of a migration)
    FINISHED = 3

    @property
    def is_finished(self) -> bool:
        return self is SequenceStatus.FINISHED


@dataclass(slots=True, eq=False)  # identity equality: queues hold sequences
class Sequence:
    """Token ids, KV bookkeeping and sampling state of one request."""

    request_id: str
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    generator: torch.Generator | None = None  # per-request RNG (seeded requests)
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0  # positions whose KV is in the cache
    block_table: list[int] = field(default_factory=list)
    detok: DetokenizerState = field(default_factory=DetokenizerState)
    finish_reason: str | None = None
    was_preempted: bool = False
    next_stage: int = 0  # id of the next export snapshot
    stage_num_kv_tokens: dict[int, int] = field(default_factory=dict)  # stage -> KV tokens then
    arrival_s: float = field(default_factory=time.time)  # wall time it entered the cluster

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_generated_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def generated_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_decoding(self) -> bool:
        """Only the last sampled token lacks KV: a one-token step."""
        return self.num_uncomputed_tokens == 1 and self.num_generated_tokens > 0
