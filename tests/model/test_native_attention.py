"""The native decode-attention kernel against the PyTorch path, on scattered paged layouts."""

from __future__ import annotations

import pytest
import torch

from starserve.model.attention import AttentionBatch, layer_attention
from starserve.model.native import NativeDecodeAttention, decode_attention_kernel

H, KV, D, BLOCK = 9, 3, 64, 16


def _case(dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """Random sequences of 1..200 tokens whose blocks are scattered through a shared cache."""
    gen = torch.Generator().manual_seed(seed)
    num_blocks, batch = 128, 7
    lengths = torch.randint(1, 200, (batch,), generator=gen)
    order = torch.randperm(num_blocks, generator=gen).tolist()
    tables = torch.zeros(batch, 13, dtype=torch.int32)
    for row, length in enumerate(lengths.tolist()):
        needed = -(-length // BLOCK)
        tables[row, :needed] = torch.tensor([order.pop() for _ in range(needed)])
    cache = torch.randn(2, KV, num_blocks * BLOCK, D, generator=gen).to(dtype)
    qkv = torch.randn(batch, (H + 2 * KV) * D, generator=gen).to(dtype)
    angles = torch.rand(256, D, generator=gen) * 6.3
    return {"lengths": lengths, "tables": tables, "cache": cache, "qkv": qkv, "angles": angles}


def _torch_reference(case: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    cache, tables, lengths = case["cache"].clone(), case["tables"], case["lengths"]
    positions = lengths - 1
    max_context = int(lengths.max())
    slots = torch.zeros(len(lengths), max_context, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        pos = torch.arange(length)
        slots[row, :length] = tables[row, pos // BLOCK].long() * BLOCK + pos % BLOCK
    valid = torch.arange(max_context)[None, :] < lengths[:, None]
    bias = torch.zeros(valid.shape, dtype=dtype).masked_fill_(~valid, float("-inf"))
    slot_mapping = slots.gather(1, positions[:, None]).squeeze(1)
    batch = AttentionBatch(slot_mapping, len(lengths), slots, bias[:, None, :], [])
    rope = (
        case["angles"].cos()[positions].to(dtype)[:, None, :],
        case["angles"].sin()[positions].to(dtype)[:, None, :],
    )
    out = layer_attention(case["qkv"], rope, cache, batch, (H, KV, D), D**-0.5)
    return torch.cat([out.flatten(), cache.flatten()])


def _native(case: dict[str, torch.Tensor]) -> torch.Tensor:
    kernel = decode_attention_kernel()
    assert kernel is not None, "the native kernel did not build (is a C compiler installed?)"
    cache, lengths = case["cache"].clone(), case["lengths"]
    native = NativeDecodeAttention(
        kernel, lengths - 1, case["tables"], BLOCK, case["angles"].cos(), case["angles"].sin()
    )
    batch = AttentionBatch(
        torch.zeros(len(lengths), dtype=torch.long), len(lengths), None, None, []
    )
    batch.native = native
    out = layer_attention(
        case["qkv"], (torch.empty(0), torch.empty(0)), cache, batch, (H, KV, D), D**-0.5
    )
    return torch.cat([out.flatten(), cache.flatten()])


@pytest.mark.parametrize("seed", range(3))
def test_float32_kernel_matches_pytorch(seed: int) -> None:
    case = _case(torch.float32, seed)
    torch.testing.assert_close(
        _native(case), _torch_reference(case, torch.float32), rtol=1e-5, atol=1e-5
    )


def test_bfloat16_kernel_is_as_close_to_float32_as_pytorch_bfloat16() -> None:
    case = _case(torch.bfloat16, 7)
    exact = _torch_reference(
        {**case, "cache": case["cache"].float(), "qkv": case["qkv"].float()}, torch.float32
    )
    native_error = (_native(case).float() - exact).abs().max()
    torch_error = (_torch_reference(case, torch.bfloat16).float() - exact).abs().max()
    assert native_error <= torch_error * 1.01, (native_error, torch_error)
    assert native_error < 0.05
