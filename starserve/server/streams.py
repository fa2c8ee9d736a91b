"""Reassemble one request's output from chunks that several instances produce.

The first token comes from a prefill instance, the rest from one or more decode instances,
and their chunks may arrive out of order. Each chunk says where its tokens start; the
stream hands them on strictly in order, so a client never sees a token twice or a gap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starserve.cluster.types import OutputChunk


@dataclass(frozen=True, slots=True)
class Piece:
    """In-order output handed to the HTTP layer."""

    token_ids: tuple[int, ...]
    text: str
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int


class RequestFailed(RuntimeError):
    """The cluster could not run the request."""


@dataclass(slots=True)
class RequestStream:
    request_id: str
    next_token_index: int = 0
    finished: bool = False
    num_prompt_tokens: int = 0
    token_times_s: list[float] = field(default_factory=list)  # wall clock of each token
    _pending: list[OutputChunk] = field(default_factory=list)
    _queue: asyncio.Queue[Piece | BaseException] = field(default_factory=asyncio.Queue)

    def push(self, chunk: OutputChunk) -> None:
        """Accept a chunk from any instance; emit whatever is now contiguous."""
        if self.finished:
            return
        if chunk.error is not None:
            self.fail(RuntimeError(chunk.error))
            return
        self._pending.append(chunk)
        progressed = True
        while progressed and not self.finished:
            progressed = False
            for pending in list(self._pending):
                end = pending.first_token_index + len(pending.token_ids)
                if pending.first_token_index <= self.next_token_index and (
                    end > self.next_token_index or pending.finished
                ):
                    self._pending.remove(pending)
                    self._emit(pending)
                    progressed = True
                elif end <= self.next_token_index:
                    self._pending.remove(pending)  # a repeat: already delivered

    def _emit(self, chunk: OutputChunk) -> None:
        skip = self.next_token_index - chunk.first_token_index
        token_ids = chunk.token_ids[skip:]
        now = time.time()
        self.token_times_s.extend(now for _ in token_ids)
        self.next_token_index += len(token_ids)
        self.num_prompt_tokens = chunk.num_prompt_tokens
        self.finished = chunk.finished
        text = chunk.text if skip == 0 else ""
        self._queue.put_nowait(
            Piece(token_ids, text, chunk.finished, chunk.finish_reason, chunk.num_prompt_tokens)
        )

    def fail(self, error: BaseException) -> None:
        self.finished = True
        self._queue.put_nowait(error)

    async def pieces(self) -> AsyncIterator[Piece]:
        while True:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise RequestFailed(str(item)) from item
            yield item
            if item.finished:
                return
