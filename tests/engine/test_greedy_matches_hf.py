"""Greedy tokens equal transformers' `generate` (float32) on real prompts, run batched."""

from __future__ import annotations

import torch

from starserve.engine import SamplingParams
from starserve.model import LoadedModel

NUM_TOKENS = 64


def hf_greedy(weights: LoadedModel, prompts: list[list[int]]) -> list[list[int]]:
    """transformers' greedy generate, left-padded batch, cut after the first end-of-sequence."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(weights.hf_dir), dtype=torch.float32)
    pad = weights.config.eos_token_ids[0]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = hf.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=NUM_TOKENS, do_sample=False,
            pad_token_id=pad,
        )  # fmt: skip
    results = []
    for row in out[:, width:].tolist():
        cut = row.index(pad) + 1 if pad in row else len(row)
        results.append(row[:cut])
    return results


def test_first_64_greedy_tokens_equal_transformers(weights, chat_prompts, make_engine):
    engine = make_engine(num_kv_blocks=256)
    outputs = engine.generate(chat_prompts, SamplingParams(max_tokens=NUM_TOKENS, temperature=0))
    expected = hf_greedy(weights, chat_prompts)
    assert len(outputs) == len(expected) >= 20
    mismatched = [
        i for i, (o, e) in enumerate(zip(outputs, expected, strict=True)) if o.new_token_ids != e
    ]
    assert mismatched == []
    assert sum(len(e) for e in expected) > 20 * 32  # real generations, not early stops
    assert engine.blocks.num_free_blocks == 256
