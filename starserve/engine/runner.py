"""Turns scheduled chunks into model inputs and runs one forward pass.

The runner reads each sequence's block table and never touches the block manager. Inputs are
built on the host and moved to the KV cache's device in one go (CPU: no copy); the native
decode kernel runs only on CPU, a GPU takes the PyTorch attention path over the same blocks.
"""

from __future__ import annotations

import torch

from starserve.engine.scheduler import ScheduledChunk
from starserve.model.attention import AttentionBatch, PrefillChunk
from starserve.model.llama import ForwardOutput, LlamaModel
from starserve.model.native import NativeDecodeAttention, decode_attention_kernel


class ModelRunner:
    """Owns nothing but references: the shared model and this engine's KV cache."""

    def __init__(
        self, model: LlamaModel, kv_cache: torch.Tensor, block_size: int, middle_layer: int | None
    ) -> None:
        self.model = model
        num_layers, _, num_kv_heads, num_blocks, _, head_dim = kv_cache.shape
        # Flat view [layers, 2, KV, slots, D]: slot = block_id * block_size + offset.
        self.flat_cache = kv_cache.view(
            num_layers, 2, num_kv_heads, num_blocks * block_size, head_dim
        )
        self.block_size = block_size
        self.middle_layer = middle_layer
        self.dtype = kv_cache.dtype
        self.device = kv_cache.device
        on_cpu = self.device.type == "cpu"
        self.native_kernel = decode_attention_kernel() if on_cpu and head_dim % 16 == 0 else None

    def run(self, chunks: list[ScheduledChunk]) -> ForwardOutput:
        """Forward the chunks (single-token chunks first); rows = chunks that sample, in order."""
        token_ids: list[int] = []
        positions: list[int] = []
        select: list[int] = []
        for chunk in chunks:
            end = chunk.start + chunk.num_tokens
            token_ids.extend(chunk.seq.token_ids[chunk.start : end])
            positions.extend(range(chunk.start, end))
            if chunk.samples:
                select.append(len(token_ids) - 1)
        position_tensor = torch.tensor(positions, dtype=torch.long)
        batch = self._attention_batch(chunks, position_tensor)
        device = self.device
        if device.type != "cpu":
            batch = _batch_to(batch, device)
        return self.model(
            torch.tensor(token_ids, dtype=torch.long).to(device),
            position_tensor.to(device),
            self.flat_cache,
            batch,
            torch.tensor(select, dtype=torch.long).to(device),
            self.middle_layer,
        )

    def _slots(self, block_table: list[int], positions: torch.Tensor) -> torch.Tensor:
        table = torch.tensor(block_table, dtype=torch.long)
        return table[positions // self.block_size] * self.block_size + positions % self.block_size

    def _attention_batch(
        self, chunks: list[ScheduledChunk], positions: torch.Tensor
    ) -> AttentionBatch:
        num_decode = sum(1 for chunk in chunks if chunk.num_tokens == 1)
        decodes, prefills = chunks[:num_decode], chunks[num_decode:]
        slot_parts: list[torch.Tensor] = []
        decode_slots = decode_bias = native = None
        if decodes and self.native_kernel is not None:
            native = self._native_inputs(decodes)
            slot_parts.append(torch.zeros(len(decodes), dtype=torch.long))  # kernel writes these
        elif decodes:
            decode_slots, decode_bias = self._decode_inputs(decodes)
            context_lens = torch.tensor([c.start + 1 for c in decodes], dtype=torch.long)
            slot_parts.append(decode_slots.gather(1, (context_lens - 1)[:, None]).squeeze(1))
        prefill_chunks: list[PrefillChunk] = []
        offset = num_decode
        for chunk in prefills:
            context_len = chunk.start + chunk.num_tokens
            context_slots = self._slots(chunk.seq.block_table, torch.arange(context_len))
            slot_parts.append(context_slots[chunk.start :])
            if chunk.start == 0:
                prefill_chunks.append(PrefillChunk(offset, chunk.num_tokens, None, None))
            else:
                query_pos = positions[offset : offset + chunk.num_tokens]
                mask = torch.arange(context_len)[None, :] <= query_pos[:, None]
                prefill_chunks.append(PrefillChunk(offset, chunk.num_tokens, context_slots, mask))
            offset += chunk.num_tokens
        return AttentionBatch(
            slot_mapping=torch.cat(slot_parts),
            num_decode_tokens=num_decode,
            decode_slots=decode_slots,
            decode_bias=decode_bias,
            prefills=prefill_chunks,
            native=native,
        )

    def _native_inputs(self, decodes: list[ScheduledChunk]) -> NativeDecodeAttention:
        """Positions and padded block tables of the decodes, for the native kernel."""
        assert self.native_kernel is not None
        max_blocks = max(len(chunk.seq.block_table) for chunk in decodes)
        tables = torch.zeros(len(decodes), max_blocks, dtype=torch.int32)
        for row, chunk in enumerate(decodes):
            tables[row, : len(chunk.seq.block_table)] = torch.tensor(
                chunk.seq.block_table, dtype=torch.int32
            )
        positions = torch.tensor([chunk.start for chunk in decodes], dtype=torch.long)
        model = self.model
        return NativeDecodeAttention(
            self.native_kernel, positions, tables, self.block_size, model.rope_cos, model.rope_sin
        )

    def _decode_inputs(self, decodes: list[ScheduledChunk]) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat slots of every context position [B, max_context] and the padding mask."""
        context_lens = [chunk.start + 1 for chunk in decodes]
        max_context = max(context_lens)
        max_blocks = -(-max_context // self.block_size)
        tables = torch.zeros(len(decodes), max_blocks, dtype=torch.long)
        for row, chunk in enumerate(decodes):
            table = chunk.seq.block_table[:max_blocks]
            tables[row, : len(table)] = torch.tensor(table, dtype=torch.long)
        offsets = torch.arange(self.block_size, dtype=torch.long)
        slots = (tables[:, :, None] * self.block_size + offsets).view(len(decodes), -1)
        slots = slots[:, :max_context].contiguous()
        valid = torch.arange(max_context)[None, :] < torch.tensor(context_lens)[:, None]
        bias = torch.zeros(valid.shape, dtype=self.dtype).masked_fill_(~valid, float("-inf"))
        return slots, bias[:, None, :]


def _batch_to(batch: AttentionBatch, device: torch.device) -> AttentionBatch:
    """The step's attention inputs on `device` (the PyTorch path: no native kernel there)."""

    def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.to(device, non_blocking=True)

    slot_mapping = move(batch.slot_mapping)
    assert slot_mapping is not None
    prefills = [
        PrefillChunk(c.token_start, c.num_tokens, move(c.context_slots), move(c.mask))
        for c in batch.prefills
    ]
    return AttentionBatch(
        slot_mapping, batch.num_decode_tokens, move(batch.decode_slots), move(batch.decode_bias),
        prefills, native=None,
    )  # fmt: skip
