"""Paged attention over a flat KV cache, for a batch of decodes plus prefill chunks.

The batch is flattened to T tokens: first the single-token decodes (one per sequence), then each
prefill chunk in turn. Per layer, RoPE is applied, K and V of all T tokens are written into the
cache at `slot_mapping`, then each query reads its context back from the cache through its block
table. The decodes go to the native kernel when it is built (`native.py`: RoPE, cache write and
attention in one call that reads the blocks in place); otherwise, and for prefill chunks, PyTorch
gathers the context (flat slot indices built once per step, shared by all layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from starserve.model.native import NativeDecodeAttention


@dataclass(slots=True)
class PrefillChunk:
    """One sequence's prefill chunk: tokens [token_start, token_start + num_tokens) of the batch."""

    token_start: int
    num_tokens: int
    context_slots: torch.Tensor | None  # [context_len] flat slots; None when the chunk is the
    #                                     whole context (fresh prompt: attend to local K/V)
    mask: torch.Tensor | None  # [num_tokens, context_len] bool, True = may attend


@dataclass(slots=True)
class AttentionBatch:
    """Everything attention needs for one step; built by the model runner, read by every layer."""

    slot_mapping: torch.Tensor  # [T] long: where each token's K/V goes in the flat cache
    num_decode_tokens: int  # the first Bd tokens are single-token decodes
    decode_slots: torch.Tensor | None  # [Bd, max_context] long (padding points at slot 0)
    decode_bias: torch.Tensor | None  # [Bd, 1, max_context] additive mask (0 or -inf)
    prefills: list[PrefillChunk]
    native: NativeDecodeAttention | None = None  # set: the decodes go to the native kernel


def layer_attention(
    qkv: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    kv_cache: torch.Tensor,
    batch: AttentionBatch,
    shape: tuple[int, int, int],
    scale: float,
) -> torch.Tensor:
    """qkv [T, (H + 2 KV) * D] before RoPE; rope = cos/sin [T, 1, D] in qkv's dtype; kv_cache
    [2, KV, num_slots, D]; shape = (H, KV, D). Returns the attention output [T, H * D]."""
    num_heads, num_kv_heads, head_dim = shape
    num_tokens, num_decode = qkv.shape[0], batch.num_decode_tokens
    if batch.native is None or num_decode == 0:
        return _torch_attention(qkv, rope, kv_cache, batch, shape, scale)
    out = torch.empty(num_tokens, num_heads * head_dim, dtype=qkv.dtype)
    batch.native.run(qkv[:num_decode], kv_cache[0], kv_cache[1], out[:num_decode], num_heads, scale)
    if batch.prefills:
        prefill_only = AttentionBatch(
            batch.slot_mapping, num_decode, None, None, batch.prefills, native=None
        )
        out[num_decode:] = _torch_attention(qkv, rope, kv_cache, prefill_only, shape, scale)[
            num_decode:
        ]
    return out


def _torch_attention(
    qkv: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    kv_cache: torch.Tensor,
    batch: AttentionBatch,
    shape: tuple[int, int, int],
    scale: float,
) -> torch.Tensor:
    num_heads, num_kv_heads, head_dim = shape
    num_tokens = qkv.shape[0]
    q, k, v = qkv.split(
        [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1
    )
    q = q.view(num_tokens, num_heads, head_dim)
    k = k.view(num_tokens, num_kv_heads, head_dim)
    v = v.view(num_tokens, num_kv_heads, head_dim)
    cos, sin = rope
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    attn = paged_attention(q, k, v, kv_cache[0], kv_cache[1], batch, scale)
    return attn.reshape(num_tokens, num_heads * head_dim)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    batch: AttentionBatch,
    scale: float,
) -> torch.Tensor:
    """q [T, H, D], k/v [T, KV, D]; caches [KV, num_slots, D] (head-major). Returns [T, H, D].

    Without `batch.decode_slots` the first `num_decode_tokens` rows are left to the caller
    (the native kernel has written their K/V and computed their output already)."""
    num_decode = batch.num_decode_tokens
    first = 0 if batch.decode_slots is not None else num_decode
    k_cache.index_copy_(1, batch.slot_mapping[first:], k[first:].transpose(0, 1))
    v_cache.index_copy_(1, batch.slot_mapping[first:], v[first:].transpose(0, 1))
    if not batch.prefills:
        return _decode_attention(q, k_cache, v_cache, batch, scale)
    out = torch.empty_like(q)
    if num_decode and batch.decode_slots is not None:
        out[:num_decode] = _decode_attention(q[:num_decode], k_cache, v_cache, batch, scale)
    for chunk in batch.prefills:
        end = chunk.token_start + chunk.num_tokens
        out[chunk.token_start : end] = _prefill_attention(
            q[chunk.token_start : end], k[chunk.token_start : end], v[chunk.token_start : end],
            k_cache, v_cache, chunk, scale,
        )  # fmt: skip
    return out


def _decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    batch: AttentionBatch,
    scale: float,
) -> torch.Tensor:
    """One query token per sequence; grouped heads share their K/V without being repeated.

    The gather lands head-major ([KV, B, L, D]), so both products are plain batched matmuls
    over KV * B without copying the gathered context again.
    """
    assert batch.decode_slots is not None and batch.decode_bias is not None
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[0]
    group = num_heads // num_kv_heads
    max_context = batch.decode_slots.shape[1]
    flat_slots = batch.decode_slots.view(-1)
    keys = k_cache.index_select(1, flat_slots).view(num_kv_heads * num_seqs, max_context, head_dim)
    values = v_cache.index_select(1, flat_slots).view(
        num_kv_heads * num_seqs, max_context, head_dim
    )
    q_grouped = q.view(num_seqs, num_kv_heads, group, head_dim).transpose(0, 1)
    q_grouped = q_grouped.reshape(num_kv_heads * num_seqs, group, head_dim)
    scores = torch.bmm(q_grouped, keys.transpose(1, 2)) * scale  # [KV*B, G, L]
    scores = scores.view(num_kv_heads, num_seqs, group, max_context) + batch.decode_bias
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    probs = probs.view(num_kv_heads * num_seqs, group, max_context)
    out = torch.bmm(probs, values).view(num_kv_heads, num_seqs, group, head_dim)
    return out.transpose(0, 1).reshape(num_seqs, num_heads, head_dim)


def _prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    chunk: PrefillChunk,
    scale: float,
) -> torch.Tensor:
    """Causal attention of one chunk over its whole context (earlier chunks read from the cache)."""
    if chunk.context_slots is None:
        keys, values, mask, causal = k.transpose(0, 1), v.transpose(0, 1), None, True
    else:
        keys = k_cache.index_select(1, chunk.context_slots)  # [KV, context, D]
        values = v_cache.index_select(1, chunk.context_slots)
        mask, causal = chunk.mask, False
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0),
        keys.unsqueeze(0),
        values.unsqueeze(0),
        attn_mask=mask,
        is_causal=causal,
        scale=scale,
        enable_gqa=True,
    )
    return out.squeeze(0).transpose(0, 1)
