"""Hugging Face folders (Llama, Qwen2 with q/k/v biases) load and match transformers."""

from __future__ import annotations

import json

import pytest
import torch

from starserve.engine import Engine, EngineConfig, SamplingParams
from starserve.errors import StarserveError
from starserve.model import load_model
from starserve.model.loader import resolve_hf_dir


def tiny_folder(tmp_path, model_type: str):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        model_type, vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=model_type == "llama", initializer_range=0.2, eos_token_id=2,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).float().eval()
    if model_type == "qwen2":  # make the q/k/v biases matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    folder = tmp_path / model_type
    model.save_pretrained(str(folder))
    _, smol = resolve_hf_dir(None)
    AutoTokenizer.from_pretrained(str(smol)).save_pretrained(str(folder))
    return folder, model


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_hf_folder_matches_transformers_hidden_states(tmp_path, model_type):
    torch.set_num_threads(1)
    folder, hf = tiny_folder(tmp_path, model_type)
    weights = load_model(str(folder))
    assert weights.config.architecture == model_type
    assert weights.config.attention_bias == (model_type == "qwen2")
    engine = Engine(EngineConfig(num_kv_blocks=16, hidden_state_interval=1), weights)
    prompt = [int(t) for t in torch.randint(3, 49152, (23,))]
    engine.add_request("r", prompt, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
    tokens, hidden = [], []
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens += out.new_token_ids
            hidden.append(out.hidden_last)
    with torch.inference_mode():
        states = hf(torch.tensor([prompt + tokens]), output_hidden_states=True).hidden_states[-1][0]
    expected = states[len(prompt) - 1 : len(prompt) + len(tokens) - 1]
    torch.testing.assert_close(torch.stack(hidden), expected, atol=1e-4, rtol=1e-4)


def test_bad_model_sources_are_user_errors(tmp_path):
    with pytest.raises(StarserveError, match="no such"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(StarserveError, match="config.json"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(StarserveError, match="unsupported architecture"):
        load_model(str(tmp_path))
    with pytest.raises(StarserveError, match="dtype"):
        load_model(None, "float16")
