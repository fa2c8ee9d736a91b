"""Llama-architecture decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) for a paged KV cache.

Weights are stored fused at load time (q/k/v in one matrix, gate/up in one matrix) so each layer
runs four matrix multiplications. The model holds no cache itself: the engine passes the KV
cache tensor and an `AttentionBatch` into `forward`, so several engines can share one model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from starserve.model.attention import AttentionBatch, layer_attention
from starserve.model.config import ModelConfig
from starserve.model.native import add_rms_norm, linear, silu_mul
from starserve.model.packing import PackedWeight, pack_weight


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
        """Adds `delta` into the residual stream `x` in place first, when given.

        Same operation order as transformers' LlamaRMSNorm, so float32 results match bit-wise;
        bfloat16 goes through one native call when the kernels are built."""
        return add_rms_norm(x, delta, self.weight, self.eps)


def rope_tables(config: ModelConfig, max_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [max_positions, head_dim] in float32 (Hugging Face's non-interleaved layout)."""
    dim = config.head_dim
    inv_freq = 1.0 / (
        config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)
    )
    freqs = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        qkv_size = config.q_size + 2 * config.kv_size
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.qkv_weight = nn.Parameter(torch.empty(qkv_size, config.hidden_size), False)
        self.qkv_bias = (
            nn.Parameter(torch.zeros(qkv_size), False) if config.attention_bias else None
        )
        self.o_weight = nn.Parameter(torch.empty(config.hidden_size, config.q_size), False)
        self.post_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        inter = config.intermediate_size
        self.gate_up_weight = nn.Parameter(torch.empty(2 * inter, config.hidden_size), False)
        self.down_weight = nn.Parameter(torch.empty(config.hidden_size, inter), False)
        self.scale = config.head_dim**-0.5
        self.shape = (config.num_heads, config.num_kv_heads, config.head_dim)
        self.packed: dict[str, PackedWeight | None] = {}  # filled by LlamaModel.pack_weights

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "packed": {}}  # see LlamaModel.__getstate__

    def pack_weights(self) -> None:
        self.packed = {
            "qkv": pack_weight(self.qkv_weight),
            "o": pack_weight(self.o_weight),
            "gate_up": pack_weight(self.gate_up_weight),
            "down": pack_weight(self.down_weight),
        }

    def forward(
        self,
        h: torch.Tensor,
        delta: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor],
        kv_cache: torch.Tensor,
        batch: AttentionBatch,
    ) -> torch.Tensor:
        """h [T, hidden] residual stream, to which `delta` (the previous layer's output, None at
        the first layer) is added in place; rope = cos/sin [T, 1, D]; kv_cache [2, KV, slots, D].
        Returns this layer's output, for the next layer (or the final norm) to add."""
        packed = self.packed.get
        qkv = linear(self.input_norm(h, delta), self.qkv_weight, self.qkv_bias, packed("qkv"))
        attn = layer_attention(qkv, rope, kv_cache, batch, self.shape, self.scale)
        attn_out = linear(attn, self.o_weight, None, packed("o"))
        gate_up = linear(self.post_norm(h, attn_out), self.gate_up_weight, None, packed("gate_up"))
        return linear(silu_mul(gate_up), self.down_weight, None, packed("down"))


@dataclass(slots=True)
class ForwardOutput:
    logits: torch.Tensor  # [S, vocab] float32, at the selected positions
    hidden_last: torch.Tensor  # [S, hidden] after the final norm, at the selected positions
    hidden_middle: torch.Tensor | None  # [S, hidden] residual stream after the tapped layer


class LlamaModel(nn.Module):
    """The decoder; `forward` computes logits only at `select_index` (one per sampled sequence)."""

    rope_cos: torch.Tensor
    rope_sin: torch.Tensor

    def __init__(self, config: ModelConfig, max_positions: int) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Parameter(torch.empty(config.vocab_size, config.hidden_size), False)
        self.layers: list[DecoderLayer] = nn.ModuleList(  # type: ignore[assignment]
            DecoderLayer(config) for _ in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = (
            self.embed
            if config.tie_word_embeddings
            else nn.Parameter(torch.empty(config.vocab_size, config.hidden_size), False)
        )
        cos, sin = rope_tables(config, max_positions)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.lm_head_packed: PackedWeight | None = None
        self.weights_packed = False

    def __getstate__(self) -> dict[str, Any]:
        # Packed copies are opaque library tensors that do not pickle (Ray moves models between
        # processes): they are dropped here and rebuilt by the first forward on the other side.
        return {**self.__dict__, "lm_head_packed": None, "weights_packed": False}

    def pack_weights(self) -> None:
        """Keep a library-blocked copy of every GEMM weight (`packing.py`). The first forward
        calls this; call it again after changing the weights."""
        for layer in self.layers:
            layer.pack_weights()
        self.lm_head_packed = pack_weight(self.lm_head)
        self.weights_packed = True

    @torch.inference_mode()
    def forward(
        self,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_cache: torch.Tensor,
        batch: AttentionBatch,
        select_index: torch.Tensor,
        middle_layer: int | None = None,
    ) -> ForwardOutput:
        """token_ids/positions [T]; kv_cache [num_layers, 2, KV, num_slots, D]."""
        if not self.weights_packed:
            self.pack_weights()
        h = F.embedding(token_ids, self.embed)
        dtype = h.dtype
        rope = (
            self.rope_cos[positions].to(dtype)[:, None, :],
            self.rope_sin[positions].to(dtype)[:, None, :],
        )
        middle = delta = None
        for index, layer in enumerate(self.layers):
            delta = layer(h, delta, rope, kv_cache[index], batch)
            if index == middle_layer:
                middle = (h[select_index] + delta[select_index]).float()
        assert delta is not None
        hidden = self.norm(h[select_index], delta[select_index])
        logits = linear(hidden, self.lm_head, None, self.lm_head_packed).float()
        return ForwardOutput(logits=logits, hidden_last=hidden.float(), hidden_middle=middle)
