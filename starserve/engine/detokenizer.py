"""Incremental detokenization with stop strings held back until they can no longer match."""

from __future__ import annotations

from typing import Any

from starserve.engine.outputs import DetokenizerState


class Detokenizer:
    """Decodes only a short window of recent tokens per step (vLLM's prefix/read offsets)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def _decode(self, token_ids: list[int]) -> str:
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True))

    def update(
        self, state: DetokenizerState, generated_ids: list[int], stop: tuple[str, ...]
    ) -> bool:
        """Fold the newest token into `state.text`; True when a stop string was found (and cut)."""
        prefix_text = self._decode(generated_ids[state.prefix_offset : state.read_offset])
        new_text = self._decode(generated_ids[state.prefix_offset :])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return False  # an incomplete UTF-8 sequence: wait for more tokens
        old_len = len(state.text)
        state.text += new_text[len(prefix_text) :]
        state.prefix_offset = state.read_offset
        state.read_offset = len(generated_ids)
        if not stop:
            return False
        search_from = max(0, old_len - max(len(s) for s in stop) + 1)
        hits = [i for i in (state.text.find(s, search_from) for s in stop) if i >= 0]
        if not hits:
            return False
        state.text = state.text[: min(hits)]
        return True

    @staticmethod
    def emit(state: DetokenizerState, stop: tuple[str, ...], finished: bool) -> str:
        """Text not streamed yet; keeps back what could still become the start of a stop string."""
        end = len(state.text)
        if stop and not finished:
            end = max(state.num_emitted_chars, end - (max(len(s) for s in stop) - 1))
        piece = state.text[state.num_emitted_chars : end]
        state.num_emitted_chars = end
        return piece
