"""Reassemble one request's output from chunks that several instances produce.

The first token comes from a prefill instance, the rest from one or more decode instances,
and their chunks may arrive out of order. Each chunk says where its tokens start; the
stream hands them on strictly in order, so a client never sees a token twice or a gap.
"""

from __future__ import annotations

import asyncio
import math
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
    """The cluster could not run the request; `status_code` is what the client is told
    (503: no instance can take it now, or it missed its deadline; 500: it failed)."""

    def __init__(self, message: str, status_code: int = 500):
        super().__init__(message)
        self.status_code = status_code


@dataclass(slots=True)
class RequestStream:
    request_id: str
    next_token_index: int = 0
    finished: bool = False
    completed: bool = False  # its last token arrived (not failed)
    num_prompt_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)  # delivered, in order (for replay)
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
        self.token_ids.extend(token_ids)
        self.num_prompt_tokens = chunk.num_prompt_tokens
        self.finished = self.completed = chunk.finished
        text = chunk.text if skip == 0 else ""
        self._queue.put_nowait(
            Piece(token_ids, text, chunk.finished, chunk.finish_reason, chunk.num_prompt_tokens)
        )

    def drop_pending(self) -> None:
        """Forget out-of-order chunks (a replay on another instance produces them again)."""
        self._pending.clear()

    def fail(self, error: BaseException) -> None:
        if not self.finished:
            self.finished = True
            self._queue.put_nowait(error)

    async def pieces(
        self, deadline_s: float = math.inf, stall_timeout_s: float = math.inf
    ) -> AsyncIterator[Piece]:
        """Pieces in order until the last; RequestFailed(503) past the monotonic `deadline_s`
        or after `stall_timeout_s` without any token, so no stream waits forever."""
        while True:
            wait_s = min(stall_timeout_s, deadline_s - time.monotonic())
            try:
                timeout_s = None if math.isinf(wait_s) else max(0.0, wait_s)
                item = await asyncio.wait_for(self._queue.get(), timeout_s)
            except TimeoutError:
                late = time.monotonic() >= deadline_s
                why = "its deadline passed" if late else f"no token for {stall_timeout_s:g} s"
                self.fail(RuntimeError(why))
                raise RequestFailed(f"request {self.request_id} stopped: {why}", 503) from None
            if isinstance(item, RequestFailed):
                raise item
            if isinstance(item, BaseException):
                raise RequestFailed(str(item)) from item
            yield item
            if item.finished:
                return
