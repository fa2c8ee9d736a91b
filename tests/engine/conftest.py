"""One loaded model per test session, shared by every engine the tests build."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from starserve.engine import Engine, EngineConfig
from starserve.model import LoadedModel, load_model
from starserve.workload import load_workload


@pytest.fixture(scope="session")
def weights() -> LoadedModel:
    return load_model(None, "float32")


@pytest.fixture(scope="session")
def chat_prompts(weights: LoadedModel) -> list[list[int]]:
    """24 real alpaca_eval prompts, chat-templated token ids."""
    requests = load_workload("alpaca_eval", num_requests=24, seed=0)
    engine = Engine(EngineConfig(num_kv_blocks=8), weights)
    prompts = [
        engine.apply_chat_template([{"role": "user", "content": r.prompt or ""}]) for r in requests
    ]
    assert len(prompts) == 24 and all(prompts)
    return prompts


@pytest.fixture(scope="session")
def make_engine(weights: LoadedModel) -> Callable[..., Engine]:
    """Factory of small engines sharing the session's model (64 KV blocks unless overridden)."""

    def build(**overrides: object) -> Engine:
        settings: dict[str, object] = {"num_kv_blocks": 64}
        settings.update(overrides)
        return Engine(EngineConfig.model_validate(settings), weights)

    return build
