"""Paged attention over a flat KV cache, for a batch of decodes plus prefill chunks.

The batch is flattened to T tokens: first the single-token decodes (one per sequence), then each
prefill chunk in turn. Per layer, K and V of all T tokens are written into the cache at
`slot_mapping`, then each query reads its context back from the cache through its block table
(expanded to flat slot indices once per step, shared by all layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
    decode_bias: torch.Tensor | None  # [Bd, 1, 1, max_context] additive mask (0 or -inf)
    prefills: list[PrefillChunk]


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    batch: AttentionBatch,
    scale: float,
) -> torch.Tensor:
    """q [T, H, D], k/v [T, KV, D]; caches [num_slots, KV, D]. Returns [T, H, D]."""
    k_cache.index_copy_(0, batch.slot_mapping, k)
    v_cache.index_copy_(0, batch.slot_mapping, v)
    num_decode = batch.num_decode_tokens
    if not batch.prefills:
        return _decode_attention(q, k_cache, v_cache, batch, scale)
    out = torch.empty_like(q)
    if num_decode:
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
    """One query token per sequence; grouped heads share their K/V without being repeated."""
    assert batch.decode_slots is not None and batch.decode_bias is not None
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    group = num_heads // num_kv_heads
    keys = k_cache[batch.decode_slots].permute(0, 2, 3, 1)  # [B, KV, D, L]
    values = v_cache[batch.decode_slots].transpose(1, 2)  # [B, KV, L, D]
    q_grouped = q.view(num_seqs, num_kv_heads, group, head_dim)
    scores = torch.matmul(q_grouped, keys) * scale + batch.decode_bias  # [B, KV, G, L]
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.matmul(probs, values).reshape(num_seqs, num_heads, head_dim)


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
        keys, values, mask, causal = k, v, None, True
    else:
        keys, values = k_cache[chunk.context_slots], v_cache[chunk.context_slots]
        mask, causal = chunk.mask, False
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0),
        keys.transpose(0, 1).unsqueeze(0),
        values.transpose(0, 1).unsqueeze(0),
        attn_mask=mask,
        is_causal=causal,
        scale=scale,
        enable_gqa=True,
    )
    return out.squeeze(0).transpose(0, 1)
