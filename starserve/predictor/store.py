"""Saving and loading trained predictors: `NAME.safetensors` (weights) + `NAME.json` (metadata).

The JSON names the predictor kind, its architecture and what it was trained on; the kind picks
the class from a plain registry, so loading never needs an if/elif chain.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from starserve.errors import StarserveError
from starserve.predictor.baselines import MeanResidualLife, PromptLengthHead
from starserve.predictor.plp import PlpArchitecture, PlpMLP
from starserve.predictor.star import StarArchitecture, StarMLP
from starserve.predictor.trail import TrailArchitecture, TrailMLP

FORMAT = "starserve-predictor"


def _build_star(arch: dict) -> nn.Module:
    arch = dict(arch, widths=tuple(arch["widths"]), quantiles=tuple(arch["quantiles"]))
    return StarMLP(StarArchitecture(**arch))


def _build_trail(arch: dict) -> nn.Module:
    return TrailMLP(TrailArchitecture(**arch))


def _build_prompt_head(arch: dict) -> nn.Module:
    return PromptLengthHead(**arch)


def _build_plp(arch: dict) -> nn.Module:
    return PlpMLP(PlpArchitecture(**arch))


BUILDERS = {
    "star_mlp": _build_star,
    "trail": _build_trail,
    "prompt_head": _build_prompt_head,
    "plp": _build_plp,
}


def architecture_of(module: nn.Module) -> tuple[str, dict]:
    if isinstance(module, StarMLP):
        return "star_mlp", asdict(module.arch)
    if isinstance(module, TrailMLP):
        return "trail", asdict(module.arch)
    if isinstance(module, PlpMLP):
        return "plp", asdict(module.arch)
    if isinstance(module, PromptLengthHead):
        width = module.net[0].out_features
        size = module.net[0].in_features
        arch = {"embedding_size": size, "width": width}
        return "prompt_head", dict(arch, max_output_tokens=module.max_output_tokens)
    raise TypeError(f"cannot save {type(module).__name__}")


def save_module(directory: Path, name: str, module: nn.Module, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    kind, arch = architecture_of(module)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(directory / f"{name}.safetensors"))
    doc = {"format": FORMAT, "kind": kind, "architecture": arch, **meta}
    (directory / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")


def load_module(directory: Path, name: str) -> tuple[nn.Module, dict]:
    from safetensors.torch import load_file

    meta_path = directory / f"{name}.json"
    weights_path = directory / f"{name}.safetensors"
    if not meta_path.is_file() or not weights_path.is_file():
        raise StarserveError(
            f"{directory}: no trained predictor {name!r} ({name}.json/.safetensors)"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT or meta.get("kind") not in BUILDERS:
        raise StarserveError(f"{meta_path}: not a starserve predictor file")
    module = BUILDERS[meta["kind"]](meta["architecture"])
    module.load_state_dict(load_file(str(weights_path)))
    module.eval()
    return module, meta


def save_mean_residual(directory: Path, model: MeanResidualLife, meta: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "kind": "mean_residual", "table": model.table.round(3).tolist()}
    (directory / "mean_residual.json").write_text(json.dumps({**doc, **meta}) + "\n")


def load_mean_residual(directory: Path) -> MeanResidualLife:
    path = directory / "mean_residual.json"
    if not path.is_file():
        raise StarserveError(f"{directory}: no mean_residual.json")
    doc = json.loads(path.read_text())
    model = MeanResidualLife(np.zeros(1), 0)
    model.table = np.asarray(doc["table"], dtype=np.float64)
    return model
