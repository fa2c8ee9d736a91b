"""Continuous batching with chunked prefill and preemption by recompute (nano-vllm's shape)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from starserve.engine.block_manager import BlockManager
from starserve.engine.sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class ScheduledChunk:
    """Run positions [start, start + num_tokens) of `seq` this step."""

    seq: Sequence
    start: int
    num_tokens: int

    @property
    def samples(self) -> bool:
        """The chunk reaches the end of the sequence, so its last logits give the next token."""
        return self.start + self.num_tokens == self.seq.num_tokens


class Scheduler:
    """Decides each step's batch; owns the waiting queue and the running list."""

    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # oldest first; preemption takes from the end
        self.num_preemptions_total = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def add_running(self, seq: Sequence, by_arrival: bool = False) -> None:
        """A sequence that already holds its blocks (an import, a resumed request): at the end
        of the batch, or (`by_arrival`) before the first running sequence that arrived later."""
        seq.status = SequenceStatus.RUNNING
        if by_arrival:
            later = (i for i, s in enumerate(self.running) if s.arrival_s > seq.arrival_s)
            self.running.insert(next(later, len(self.running)), seq)
        else:
            self.running.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take `seq` out of both queues (its blocks are the caller's business)."""
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)

    def schedule(self) -> list[ScheduledChunk]:
        """This step's chunks, decodes first (running before waiting, oldest first)."""
        budget = self.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted by an earlier iteration
            num_tokens = min(seq.num_uncomputed_tokens, budget)
            if self._make_room(seq, seq.num_computed_tokens + num_tokens):
                chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, num_tokens))
                budget -= num_tokens
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            num_tokens = min(seq.num_uncomputed_tokens, budget)
            if not self.blocks.can_grow(seq, seq.num_computed_tokens + num_tokens):
                break
            self.blocks.grow(seq, seq.num_computed_tokens + num_tokens)
            self.waiting.popleft()
            self.add_running(seq)
            chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, num_tokens))
            budget -= num_tokens
        chunks.sort(key=lambda chunk: chunk.num_tokens != 1)  # stable: single tokens first
        return chunks

    def _make_room(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow `seq` to `num_tokens`, preempting the newest running sequences if needed."""
        while not self.blocks.can_grow(seq, num_tokens):
            victim = self.running[-1]
            self.preempt(victim)
            if victim is seq:
                return False
        self.blocks.grow(seq, num_tokens)
        return True

    def preempt(self, seq: Sequence) -> None:
        """Free the KV of `seq` and queue it first, to be recomputed from its tokens."""
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.num_computed_tokens = 0
        seq.was_preempted = True
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions_total += 1
