"""A model shape without its own kernel profile: DeepSeek-R1-Distill-Qwen-7B (Qwen2) derived
from Llama-2-7B's measured H100 kernels, operator by operator."""

from __future__ import annotations

import numpy as np

from starserve.sim.hardware import GPUS, MODELS, kv_capacity_tokens, operator_scale
from starserve.sim.latency import LAYER_OPS, ProfiledLatencyModel, profile_points


def test_qwen2_7b_shape_matches_the_paper() -> None:
    qwen = MODELS["qwen2-7b"]
    assert qwen.kv_bytes_per_token == 2 * 28 * 4 * 128 * 2 == 57344  # 56 KiB
    tokens = kv_capacity_tokens(qwen, GPUS["h100"], 1)
    assert 0.95e6 < tokens < 1.1e6  # "about 1M KV tokens per 80 GB GPU after weights"


def test_operator_scale_is_one_on_the_same_shape_and_follows_weights() -> None:
    llama, qwen = MODELS["llama2-7b"], MODELS["qwen2-7b"]
    assert set(operator_scale(llama, llama).values()) == {1.0}
    scale = operator_scale(qwen, llama)
    # GQA: Q + 2 of 4 KV heads against 3 full projections at 4096
    assert np.isclose(scale["attn_pre_proj"], 3584 * (3584 + 1024) / (4096 * 3 * 4096))
    assert np.isclose(scale["mlp_up_proj"], 3584 * 18944 / (4096 * 11008))
    identity = profile_points("h100", "Llama-2-7b-hf", 1, (1.0,) * len(LAYER_OPS))
    base = profile_points("h100", "Llama-2-7b-hf", 1)
    assert np.array_equal(identity[1], base[1])


def test_qwen2_7b_step_costs() -> None:
    llama = ProfiledLatencyModel.build("llama2-7b", "h100")
    qwen = ProfiledLatencyModel.build("qwen2-7b", "h100")
    # fewer layers but more weights per layer: within 15% of Llama-2-7B's fixed cost
    for batch in (1, 64, 256):
        assert 0.85 < qwen.decode_fixed_s(batch) / llama.decode_fixed_s(batch) < 1.15
    # 8x fewer KV bytes per token (GQA, 28 layers): attention reads 9x less per token
    assert np.isclose(llama.decode_s_per_kv_token / qwen.decode_s_per_kv_token, 512 / 56)
