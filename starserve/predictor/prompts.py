"""Prompt files for collection: JSONL with a `prompt` field (or `problem`, as math sets have)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from starserve.errors import StarserveError

TEXT_FIELDS = ("prompt", "problem")
ID_FIELDS = ("id", "uid", "unique_id")
# Appended to math problems (rows read from a `problem` field: MATH-500, AIME, AMC) when a
# collection asks for reasoning-style answers; the usual math chain-of-thought instruction.
STEP_BY_STEP = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True, slots=True)
class PromptRow:
    prompt_id: str  # "<set>:<id>", unique across files
    prompt_set: str
    text: str
    is_problem: bool = False  # read from a `problem` field (a math problem set)

    def with_step_by_step(self) -> PromptRow:
        """The row with the step-by-step instruction appended if it is a math problem."""
        if not self.is_problem:
            return self
        return PromptRow(self.prompt_id, self.prompt_set, f"{self.text}\n\n{STEP_BY_STEP}", True)


def read_prompts(path: Path, max_prompts: int | None = None) -> list[PromptRow]:
    """Rows of one JSONL prompt file; a malformed line is a one-line error naming it."""
    if not path.is_file():
        raise StarserveError(f"{path}: no such prompt file")
    prompt_set = path.stem
    rows: list[PromptRow] = []
    # split on "\n" only: str.splitlines also breaks at U+2028 etc. inside JSON strings
    for number, line in enumerate(path.read_text().split("\n"), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise StarserveError(f"{path}:{number}: not valid JSON") from None
        field = next((f for f in TEXT_FIELDS if isinstance(item, dict) and f in item), None)
        text = None if field is None else item[field]
        if not isinstance(text, str) or not text.strip():
            raise StarserveError(f"{path}:{number}: no non-empty 'prompt' (or 'problem') field")
        key = next((str(item[f]) for f in ID_FIELDS if f in item), str(number))
        rows.append(PromptRow(f"{prompt_set}:{key}", prompt_set, text, field == "problem"))
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
