"""Prompt files for collection: JSONL with a `prompt` field (or `problem`, as math sets have)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from starserve.errors import StarserveError

TEXT_FIELDS = ("prompt", "problem")
ID_FIELDS = ("id", "uid", "unique_id")


@dataclass(frozen=True, slots=True)
class PromptRow:
    prompt_id: str  # "<set>:<id>", unique across files
    prompt_set: str
    text: str


def read_prompts(path: Path, max_prompts: int | None = None) -> list[PromptRow]:
    """Rows of one JSONL prompt file; a malformed line is a one-line error naming it."""
    if not path.is_file():
        raise StarserveError(f"{path}: no such prompt file")
    prompt_set = path.stem
    rows: list[PromptRow] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise StarserveError(f"{path}:{number}: not valid JSON") from None
        text = next((item[f] for f in TEXT_FIELDS if isinstance(item, dict) and f in item), None)
        if not isinstance(text, str) or not text.strip():
            raise StarserveError(f"{path}:{number}: no non-empty 'prompt' (or 'problem') field")
        key = next((str(item[f]) for f in ID_FIELDS if f in item), str(number))
        rows.append(PromptRow(f"{prompt_set}:{key}", prompt_set, text))
        if max_prompts is not None and len(rows) >= max_prompts:
            break
    if not rows:
        raise StarserveError(f"{path}: no prompts")
    return rows


def interleave(groups: list[list[PromptRow]]) -> list[PromptRow]:
    """Round-robin over the files, so a partial collection still covers every set."""
    out: list[PromptRow] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out
