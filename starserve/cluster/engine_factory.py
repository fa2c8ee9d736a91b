"""Build an instance's engine and predictor (torch imports stay inside functions)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from starserve.errors import StarserveError

log = logging.getLogger(__name__)


def load_predictor_or_none(path: str | None) -> Any | None:
    """The remaining-length predictor; without one (none shipped yet, or its package missing)
    None with a warning, so that predictive policies fall back to current load. A predictor
    the user named explicitly must load."""
    try:
        from starserve.predictor.runtime import load_predictor
    except ImportError as err:
        if path is not None:
            raise StarserveError(
                f"--predictor {path}: predictor package unavailable ({err})"
            ) from None
        log.warning("no predictor package (%s): policies see current load only", err)
        return None
    try:
        return load_predictor(path)
    except (StarserveError, OSError) as err:
        if path is not None:
            raise
        log.warning("no shipped predictor (%s): policies see current load only", err)
        return None


def build_engine(config: Any, weights: Any = None) -> tuple[Any, Any | None]:
    """(Engine, predictor or None) for a `WorkerConfig`; one torch thread per instance. The
    engine has run a real warm-up step (`engine/warmup.py`): one that cannot step raises a
    one-line StarserveError naming the instance, so start-up fails before /health says ok."""
    import torch

    from starserve.engine import Engine, EngineConfig
    from starserve.engine.warmup import EngineStartupError, warm_up

    predictor = load_predictor_or_none(config.predictor_path) if config.use_predictor else None
    overrides: dict[str, Any] = {"num_threads": 1}
    if predictor is not None:
        overrides["hidden_state_interval"] = int(predictor.interval)
    overrides.update(config.engine_overrides)
    torch.set_num_threads(int(overrides["num_threads"]))
    engine_config = EngineConfig(**overrides)
    if weights is not None and weights.device != engine_config.device:
        # The driver ships CPU weights through Ray; each instance moves them to its device.
        weights = dataclasses.replace(
            weights, model=weights.model.to(engine_config.device), device=engine_config.device
        )
    engine = Engine(engine_config, weights=weights)
    try:
        warm_up(engine)
    except EngineStartupError as err:
        raise StarserveError(f"instance {config.instance_id}: {err}") from None
    return engine, predictor
