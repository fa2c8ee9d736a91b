"""Pre-packed GEMM weights: same products as F.linear, row-independent, and picklable models."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch
import torch.nn.functional as F

from starserve.engine import Engine, EngineConfig, SamplingParams
from starserve.hardware import cpu
from starserve.model.packing import MAX_PACKED_ROWS, MIN_PACKED_ROWS, pack_weight

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_products_match_linear_and_ignore_batch_mates(dtype):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(960, 576, generator=gen).to(dtype)
    bias = torch.randn(960, generator=gen).to(dtype)
    packed = pack_weight(weight)
    x = torch.randn(40, 576, generator=gen).to(dtype)
    if dtype == torch.bfloat16 and not cpu().bf16_weight_packing:
        # oneDNN cannot pack bfloat16 here (plain AVX2): no packed copy, and the plain product
        # the model then uses works (it raised in the packing call before the guard).
        assert packed is None
        assert F.linear(x, weight, bias).shape == (40, 960)
        return
    assert packed is not None, "this PyTorch build should have oneDNN and MKL"
    out = packed.matmul(x, bias)
    assert out is not None
    reference = F.linear(x, weight, bias)
    if dtype == torch.bfloat16:
        assert torch.equal(out, reference)
    else:
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-4)
    # Without a bias (Llama's case) the same rows in a smaller batch, still in the packed range,
    # give the same bits: a request's products do not depend on its batch-mates. (oneDNN adds
    # a bfloat16 bias in a batch-dependent way, exactly as F.linear does.)
    together = packed.matmul(x, None)
    assert together is not None
    for rows in (4, 5, 7, 8, 9, 11, 12, 16):  # 5-11: MKL's thread split would change the bits
        alone = packed.matmul(x[:rows].contiguous(), None)
        assert alone is not None and torch.equal(alone, together[:rows]), rows
    # Outside the packed range the caller is told to use the plain weight.
    assert packed.matmul(x[: MIN_PACKED_ROWS[dtype] - 1], bias) is None
    assert packed.matmul(torch.zeros(MAX_PACKED_ROWS + 1, 576, dtype=dtype), bias) is None


def test_a_pickled_model_repacks_and_generates_the_same_tokens(weights, chat_prompts):
    """Ray pickles models; the packed copies are opaque tensors that cannot be pickled."""
    prompts = chat_prompts[:4]  # 4 rows: float32's packed path
    engine = Engine(EngineConfig(num_kv_blocks=64), weights)
    reference = [out.new_token_ids for out in engine.generate(prompts, GREEDY)]
    assert weights.model.weights_packed and weights.model.layers[0].packed["qkv"] is not None
    copy = pickle.loads(pickle.dumps(weights.model))
    assert not copy.weights_packed and copy.lm_head_packed is None
    moved = Engine(EngineConfig(num_kv_blocks=64), dataclasses.replace(weights, model=copy))
    assert [out.new_token_ids for out in moved.generate(prompts, GREEDY)] == reference
    assert copy.weights_packed
