"""Device handling, tested where it runs here (CPU): the explicit device, the device-generic
PyTorch attention path a GPU takes, and the checks that stop a wrong device at start-up."""

from __future__ import annotations

import pytest
import torch

from starserve.engine import Engine, EngineConfig, SamplingParams
from starserve.engine.runner import _batch_to
from starserve.errors import StarserveError
from starserve.hardware import check_device

GREEDY = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)


def test_the_pytorch_path_a_gpu_takes_gives_the_native_tokens(weights, chat_prompts) -> None:
    """`--device cpu` explicit; then the same engine without the native kernel and with every
    step's inputs passed through the host-to-device move (`_batch_to`, here to the CPU): the
    GPU's code path, which must give the same greedy tokens."""
    prompts = chat_prompts[:3]
    native = Engine(EngineConfig(device="cpu", num_kv_blocks=64), weights)
    assert native.runner.native_kernel is not None and native.kv_cache.device.type == "cpu"
    expected = [out.new_token_ids for out in native.generate(prompts, GREEDY)]
    generic = Engine(EngineConfig(num_kv_blocks=64), weights)
    generic.runner.native_kernel = None
    build = generic.runner._attention_batch
    generic.runner._attention_batch = lambda chunks, positions: _batch_to(  # type: ignore[method-assign]
        build(chunks, positions), torch.device("cpu")
    )
    assert [out.new_token_ids for out in generic.generate(prompts, GREEDY)] == expected


def test_wrong_devices_stop_at_start_up(weights) -> None:
    with pytest.raises(StarserveError, match="--device must be one of cpu, cuda"):
        check_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(StarserveError, match="no CUDA GPU is visible"):
            check_device("cuda")
    with pytest.raises(ValueError, match="weights are on cpu"):
        Engine(EngineConfig(device="cuda", num_kv_blocks=8), weights)
