"""The native decode-attention kernel against the PyTorch path, on scattered paged layouts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from starserve.hardware import cpu
from starserve.model.attention import AttentionBatch, layer_attention
from starserve.model.native import (
    NativeDecodeAttention,
    _library,
    add_rms_norm,
    decode_attention_kernel,
    linear,
    silu_mul,
    vector_lanes,
)

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


@pytest.mark.parametrize("rows", [1, 2, 7])
@pytest.mark.parametrize("with_bias", [False, True])
def test_small_linear_matches_torch_in_bfloat16(rows: int, with_bias: bool) -> None:
    assert decode_attention_kernel() is not None, "the native kernels did not build"
    gen = torch.Generator().manual_seed(rows)
    # 579 inputs: a tail past the 32-wide vector loop; 1027 outputs: a partial last block.
    x = torch.randn(rows, 579, generator=gen).bfloat16()
    weight = torch.randn(1027, 579, generator=gen).bfloat16()
    bias = torch.randn(1027, generator=gen).bfloat16() if with_bias else None
    exact = torch.nn.functional.linear(
        x.float(), weight.float(), None if bias is None else bias.float()
    )
    if rows <= 2:
        out = linear(x, weight, bias)  # the model's route: the kernel for 1-2 rows
    else:  # the kernel itself handles any row count in tiles of four
        out = torch.empty(rows, 1027, dtype=torch.bfloat16)
        _library().small_linear(
            x.data_ptr(), x.stride(0), weight.data_ptr(), None if bias is None else bias.data_ptr(),
            out.data_ptr(), rows, 1027, 579, 1, 2,
        )  # fmt: skip
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 1027)
    # float32 accumulation, one rounding to bfloat16: within half a bfloat16 ulp (2^-9 relative)
    torch.testing.assert_close(out.float(), exact, rtol=2**-8, atol=1e-3)


@pytest.mark.parametrize("rows", [1, 5])
def test_fused_elementwise_match_torch_bfloat16(rows: int) -> None:
    assert decode_attention_kernel() is not None, "the native kernels did not build"
    gen = torch.Generator().manual_seed(rows)
    h = torch.randn(rows, 576, generator=gen).bfloat16()
    delta = torch.randn(rows, 576, generator=gen).bfloat16()
    weight = torch.rand(576, generator=gen).bfloat16()
    expected_h = h + delta
    x32 = expected_h.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)
    expected = weight * x32.to(torch.bfloat16)
    out = add_rms_norm(h, delta, weight, 1e-5)
    assert torch.equal(h, expected_h)  # the residual stream is updated in place, same rounding
    torch.testing.assert_close(out, expected, rtol=2**-7, atol=1e-2)
    gate_up = torch.randn(rows, 2 * 1536, generator=gen).bfloat16() * 4
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(silu_mul(gate_up), F.silu(gate) * up, rtol=2**-7, atol=1e-2)


def test_the_kernels_take_the_vector_path_of_the_isa_level() -> None:
    """-march=native at the CPU's level, exactly -mavx2 -mfma under STARSERVE_ISA=avx2: the
    8-lane paths are what an AVX2-only CPU runs (the tests here then check their results)."""
    expected = {"amx_bf16": 16, "avx512_bf16": 16, "avx512": 16, "avx2": 8, "scalar": 1}
    if cpu().arch == "x86_64":
        assert vector_lanes() == expected[cpu().isa]


@pytest.mark.parametrize(("rows", "width"), [(1, 576), (5, 580)])
def test_fused_elementwise_match_torch_float32(rows: int, width: int) -> None:
    assert decode_attention_kernel() is not None, "the native kernels did not build"
    gen = torch.Generator().manual_seed(rows)
    h = torch.randn(rows, width, generator=gen)
    delta = torch.randn(rows, width, generator=gen)
    weight = torch.rand(width, generator=gen)
    expected_h = h + delta
    expected = weight * (expected_h * torch.rsqrt(expected_h.pow(2).mean(-1, keepdim=True) + 1e-5))
    out = add_rms_norm(h, delta, weight, 1e-5)
    assert torch.equal(h, expected_h)  # in place, one float32 addition per element as PyTorch
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    without_delta = add_rms_norm(h.clone(), None, weight, 1e-5)
    torch.testing.assert_close(without_delta, expected, rtol=1e-6, atol=1e-6)
    gate_up = torch.randn(rows, 2 * (width + 4), generator=gen) * 4
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(silu_mul(gate_up), F.silu(gate) * up, rtol=1e-6, atol=1e-6)
