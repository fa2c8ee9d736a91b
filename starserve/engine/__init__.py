"""Paged-KV inference engine with continuous batching, hidden-state tap and request migration."""

from starserve.engine.config import EngineConfig
from starserve.engine.engine import Engine
from starserve.engine.migration import EngineFullError
from starserve.engine.outputs import EngineStats, RequestOutput, RequestSnapshot
from starserve.engine.params import SamplingParams

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineFullError",
    "EngineStats",
    "RequestOutput",
    "RequestSnapshot",
    "SamplingParams",
]
