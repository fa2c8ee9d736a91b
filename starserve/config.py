"""The configuration tree.

Every subsystem defines its settings as a pydantic model in its own package (for example
`starserve.sim.config.SimConfig`); this module holds what they share: a strict base class and
helpers that turn files and validation failures into one-line messages.
Constructing a config does validation only, never I/O.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from starserve.errors import StarserveError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class Settings(BaseModel):
    """Base for every settings model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def describe_validation_error(err: ValidationError, source: str) -> str:
    """One line: `<source>: <dotted.field>: <problem>` (first problem, and how many more)."""
    problems = err.errors()
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"]) or "(root)"
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return f"{source}: {where}: {first['msg']}{more}"


def validate(model: type[ConfigT], data: Any, source: str = "config") -> ConfigT:
    """Build `model` from plain data, raising `StarserveError` with a one-line message."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise StarserveError(describe_validation_error(err, source)) from None


def load_yaml(model: type[ConfigT], path: str | Path) -> ConfigT:
    """Read a YAML file into `model`; missing files and bad YAML are one-line errors too."""
    path = Path(path)
    if not path.is_file():
        raise StarserveError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise StarserveError(f"{path}: not valid YAML{line}") from None
    return validate(model, data if data is not None else {}, source=str(path))
