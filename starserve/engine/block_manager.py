"""KV block allocation with query/commit pairs: ask `can_*`, then commit; `free` rolls back."""

from __future__ import annotations

from collections import deque

from starserve.engine.sequence import Sequence


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class BlockManager:
    """Hands out block ids of one engine's KV cache; each sequence owns a block table."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.free_block_ids: deque[int] = deque(range(num_blocks))
        self._reserved: dict[str, list[int]] = {}  # imports in progress: request id -> blocks

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    def num_missing_blocks(self, seq: Sequence, num_tokens: int) -> int:
        """Blocks `seq` still needs so that `num_tokens` positions have a slot."""
        return max(0, blocks_for(num_tokens, self.block_size) - len(seq.block_table))

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.num_missing_blocks(seq, num_tokens) <= self.num_free_blocks

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Commit: give `seq` slots for `num_tokens` positions (ask `can_grow` first)."""
        missing = self.num_missing_blocks(seq, num_tokens)
        if missing > self.num_free_blocks:
            raise RuntimeError(
                f"{seq.request_id}: {missing} blocks needed, {self.num_free_blocks} free"
            )
        seq.block_table.extend(self.free_block_ids.popleft() for _ in range(missing))

    def free(self, seq: Sequence) -> None:
        self.free_block_ids.extend(seq.block_table)
        seq.block_table = []

    # --- imports (multi-stage migration destination) ---
    def can_reserve(self, num_tokens: int) -> bool:
        return blocks_for(num_tokens, self.block_size) <= self.num_free_blocks

    def reserve(self, request_id: str, num_tokens: int) -> list[int]:
        """Commit: reserve (or extend a reservation to) slots for `num_tokens` positions."""
        blocks = self._reserved.setdefault(request_id, [])
        missing = max(0, blocks_for(num_tokens, self.block_size) - len(blocks))
        if missing > self.num_free_blocks:
            raise RuntimeError(
                f"{request_id}: {missing} blocks needed, {self.num_free_blocks} free"
            )
        blocks.extend(self.free_block_ids.popleft() for _ in range(missing))
        return blocks

    def reservation(self, request_id: str) -> list[int] | None:
        return self._reserved.get(request_id)

    def take_reservation(self, request_id: str) -> list[int]:
        """Hand a reservation over to a sequence (its block table)."""
        return self._reserved.pop(request_id)

    def cancel_reservation(self, request_id: str) -> None:
        self.free_block_ids.extend(self._reserved.pop(request_id, []))
