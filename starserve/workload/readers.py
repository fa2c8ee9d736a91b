"""Readers for the two file formats behind every workload: length CSVs and prompt JSONL.

Every problem with a file (missing, unreadable, a bad header, a bad row) raises
`StarserveError` with one line naming the file, the row and what is wrong.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from starserve.errors import StarserveError
from starserve.workload.types import WorkloadRequest

TIMED_COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")
LENGTH_COLUMNS = ("num_prefill_tokens", "num_decode_tokens")
# A rough, tokenizer-free estimate (about four characters per token for English BPE
# tokenizers); the runtime tokenizes the real text, so this only feeds statistics and sims.
CHARS_PER_TOKEN = 4


def approx_num_tokens(text: str) -> int:
    """Approximate token count of `text` (ceil of characters ÷ 4, at least 1)."""
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def _open_text(path: Path) -> str:
    if not path.is_file():
        raise StarserveError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise StarserveError(f"{path}: cannot read file ({err.__class__.__name__})") from None


def _parse_number(path: Path, line_no: int, column: str, raw: str | None, kind: type) -> Any:
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise StarserveError(
            f"{path}: row {line_no}: column {column}: not a number: {raw!r}"
        ) from None
    if value < 0:
        raise StarserveError(f"{path}: row {line_no}: column {column}: negative value {raw}")
    return value


def read_length_csv(path: Path, *, name: str | None = None) -> list[WorkloadRequest]:
    """Read a CSV with `num_prefill_tokens,num_decode_tokens` and optionally `arrived_at`.

    Without an `arrived_at` column every request arrives at 0 s (apply an arrival process).
    Request ids are `<name>-<row index>` (row index from 0, header excluded).
    """
    rows = csv.DictReader(io.StringIO(_open_text(path), newline=""))
    header = rows.fieldnames or []
    missing = [column for column in LENGTH_COLUMNS if column not in header]
    if missing:
        raise StarserveError(
            f"{path}: missing column(s) {', '.join(missing)} "
            f"(expected header {','.join(TIMED_COLUMNS)})"
        )
    timed = "arrived_at" in header
    prefix = name or path.stem
    requests = []
    for index, row in enumerate(rows):
        line_no = index + 2
        arrival_time_s = (
            _parse_number(path, line_no, "arrived_at", row["arrived_at"], float) if timed else 0.0
        )
        requests.append(
            WorkloadRequest(
                request_id=f"{prefix}-{index}",
                arrival_time_s=arrival_time_s,
                num_prompt_tokens=_parse_int(path, line_no, "num_prefill_tokens", row),
                num_output_tokens=_parse_int(path, line_no, "num_decode_tokens", row),
            )
        )
    if not requests:
        raise StarserveError(f"{path}: no data rows")
    return requests


def _parse_int(path: Path, line_no: int, column: str, row: dict[str, str]) -> int:
    raw = row[column]
    number = _parse_number(path, line_no, column, raw, float)
    if number != int(number):
        raise StarserveError(f"{path}: row {line_no}: column {column}: not an integer: {raw!r}")
    return int(number)


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line number, object)` for each non-empty line; bad JSON is a one-line error."""
    for line_no, line in enumerate(_open_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise StarserveError(f"{path}: line {line_no}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise StarserveError(f"{path}: line {line_no}: expected a JSON object")
        yield line_no, record


def read_prompt_jsonl(
    path: Path,
    *,
    text_field: str = "prompt",
    id_field: str | None = "id",
    name: str | None = None,
) -> list[WorkloadRequest]:
    """Read a JSONL prompt set: one object per line with the prompt text in `text_field`.

    `num_prompt_tokens` is `approx_num_tokens(text)`; `num_output_tokens` is the line's
    `num_output_tokens` if present, else 0 (unknown); `arrival_time_s` is the line's
    `arrival_time_s` if present, else 0. Ids come from `id_field` or the line index.
    """
    prefix = name or path.stem
    requests = []
    for index, (line_no, record) in enumerate(iter_jsonl(path)):
        text = record.get(text_field)
        if not isinstance(text, str) or not text:
            raise StarserveError(
                f"{path}: line {line_no}: missing or empty string field {text_field!r}"
            )
        raw_id = record.get(id_field) if id_field else None
        requests.append(
            WorkloadRequest(
                request_id=f"{prefix}-{raw_id if raw_id is not None else index}",
                arrival_time_s=_json_number(path, line_no, record, "arrival_time_s", float),
                num_prompt_tokens=approx_num_tokens(text),
                num_output_tokens=_json_number(path, line_no, record, "num_output_tokens", int),
                prompt=text,
            )
        )
    if not requests:
        raise StarserveError(f"{path}: no prompts")
    return requests


def _json_number(path: Path, line_no: int, record: dict[str, Any], key: str, kind: type) -> Any:
    value = record.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise StarserveError(f"{path}: line {line_no}: {key} must be a non-negative number")
    if kind is int and value != int(value):
        raise StarserveError(f"{path}: line {line_no}: {key} must be an integer")
    return kind(value)
