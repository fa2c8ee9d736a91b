"""The start-up warm-up: a real step that leaves nothing behind, and a clear failure otherwise."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from starserve.cluster.engine_factory import build_engine
from starserve.cluster.types import WorkerConfig
from starserve.engine import Engine, EngineConfig, SamplingParams
from starserve.engine.warmup import EngineStartupError, warm_up
from starserve.errors import StarserveError


def test_warm_up_steps_for_real_and_leaves_nothing_behind(make_engine) -> None:
    engine = make_engine()
    assert warm_up(engine) > 0
    assert not engine.seqs and not engine.has_unfinished_requests()
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    # The engine serves normally afterwards, from a clean state.
    out = engine.generate([[1, 2, 3]], SamplingParams(max_tokens=3, temperature=0))
    assert out[0].num_generated_tokens == 3


def test_an_engine_that_cannot_step_fails_with_the_reason(weights) -> None:
    """A model whose first layer's output projection has the wrong shape loads, but no step
    can run: the warm-up says so (the error PyTorch raised, one line)."""
    model = copy.deepcopy(weights.model)
    layer = model.layers[0]
    layer.o_weight = torch.nn.Parameter(layer.o_weight[:, :-1].contiguous(), False)
    model.weights_packed = True  # keep the plain (broken) weight in use
    for layer in model.layers:
        layer.packed = {}
    broken = dataclasses.replace(weights, model=model)
    engine = Engine(EngineConfig(num_kv_blocks=8), broken)
    with pytest.raises(EngineStartupError, match="cannot run a step .*RuntimeError") as info:
        warm_up(engine)
    assert "\n" not in str(info.value)
    assert not engine.seqs and engine.blocks.num_free_blocks == engine.blocks.num_blocks
    # What a cluster instance raises: a one-line user-facing error naming the instance.
    config = WorkerConfig(
        instance_id=3, engine_overrides={"num_kv_blocks": 8}, predictor_path=None,
        use_predictor=False,
    )  # fmt: skip
    with pytest.raises(StarserveError, match=r"^instance 3: the engine cannot run a step"):
        build_engine(config, broken)


def test_bfloat16_runs_wherever_it_is_asked_for(chat_prompts, make_engine) -> None:
    """Explicit bfloat16 on a CPU without native bfloat16 (or under STARSERVE_ISA=avx2): no
    oneDNN packing, plain products, and the engine steps and agrees with float32 on the first
    greedy token of real prompts (the issue's machine failed right here)."""
    from starserve.hardware import cpu
    from starserve.model import load_model

    bf16 = load_model(None, "bfloat16")
    engine = Engine(EngineConfig(dtype="bfloat16", num_kv_blocks=64), bf16)
    warm_up(engine)
    packed = bf16.model.layers[0].packed["qkv"]
    assert (packed is not None) == cpu().bf16_weight_packing
    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    prompts = chat_prompts[:4]
    first = [out.new_token_ids[0] for out in engine.generate(prompts, params)]
    reference = [out.new_token_ids[0] for out in make_engine().generate(prompts, params)]
    assert first == reference
