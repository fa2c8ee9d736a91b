"""ServeGen's DeepSeek-R1 reasoning workload (alibaba/ServeGen, arXiv 2505.09999).

The data is per client: `chunk-N-trace.csv` has one row per 600-s window
(`window start s, rate req/s, CV of inter-arrival times, distribution, shape, scale`; an empty
distribution means no traffic) and `chunk-N-dataset.json` maps a window start to probability
mass functions (Python-dict strings, parsed with `ast.literal_eval`) of `input_tokens`,
`output_tokens` and `reason_ratio`. A dataset window applies to every trace window from its
start on (the latest dataset start <= the trace window), as in ServeGen's own ClientPool.
Input and output lengths are drawn independently from their window's marginal PMFs, as ServeGen
does.
"""

from __future__ import annotations

import ast
import csv
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from starserve.errors import StarserveError
from starserve.paths import data_dir

SERVEGEN_SUBDIR = Path("servegen/reason/deepseek-r1")
WINDOW_S = 600.0


@dataclass(frozen=True, slots=True)
class Pmf:
    """A probability mass function over integer token counts (probabilities sum to 1)."""

    values: np.ndarray
    probs: np.ndarray

    def mean(self) -> float:
        return float(np.dot(self.values, self.probs))


@dataclass(frozen=True, slots=True)
class LengthWindow:
    """One client's length distributions, valid from `start_s` on."""

    client_id: int
    start_s: float
    input_tokens: Pmf
    output_tokens: Pmf


@dataclass(frozen=True, slots=True)
class RateWindow:
    """One client's arrival process over [start_s, start_s + 600 s)."""

    client_id: int
    start_s: float
    rate_per_s: float
    cv: float
    distribution: str  # "Gamma" or "Weibull"
    shape: float
    scale_s: float


@dataclass(frozen=True, slots=True)
class ServeGenData:
    """Everything parsed from one ServeGen model folder."""

    length_windows: tuple[LengthWindow, ...]
    rate_windows: tuple[RateWindow, ...]


def _parse_pmf(path: Path, key: str, field: str, text: object) -> Pmf | None:
    if not isinstance(text, str):
        raise StarserveError(f"{path}: window {key}: {field} is not a string")
    try:
        mapping = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise StarserveError(
            f"{path}: window {key}: {field} is not a Python dict literal"
        ) from None
    if not isinstance(mapping, dict):
        raise StarserveError(f"{path}: window {key}: {field} is not a dict")
    if not mapping:
        return None  # ServeGen skips windows with an empty distribution
    values = np.array(list(mapping.keys()), dtype=np.int64)
    probs = np.array(list(mapping.values()), dtype=np.float64)
    total = probs.sum()
    if (probs < 0).any() or not abs(total - 1.0) < 1e-6 or (values < 0).any():
        raise StarserveError(f"{path}: window {key}: {field} is not a probability mass function")
    return Pmf(values=values, probs=probs / total)


def _read_dataset(path: Path, client_id: int) -> list[LengthWindow]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise StarserveError(f"{path}: cannot read file ({err.__class__.__name__})") from None
    except json.JSONDecodeError as err:
        raise StarserveError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise StarserveError(f"{path}: expected an object keyed by window start")
    windows = []
    for key, fields in data.items():
        if not isinstance(fields, dict) or not {"input_tokens", "output_tokens"} <= fields.keys():
            raise StarserveError(f"{path}: window {key}: needs input_tokens and output_tokens")
        pmfs = [_parse_pmf(path, key, f, fields[f]) for f in ("input_tokens", "output_tokens")]
        if pmfs[0] is None or pmfs[1] is None:
            continue
        windows.append(LengthWindow(client_id, _window_start(path, key), pmfs[0], pmfs[1]))
    return sorted(windows, key=lambda w: w.start_s)


def _window_start(path: Path, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise StarserveError(f"{path}: window start {raw!r} is not a number") from None


def _read_trace(path: Path, client_id: int) -> list[RateWindow]:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except OSError as err:
        raise StarserveError(f"{path}: cannot read file ({err.__class__.__name__})") from None
    windows = []
    for line_no, row in enumerate(csv.reader(lines), start=1):
        if not row:
            continue
        if len(row) != 6:
            raise StarserveError(f"{path}: line {line_no}: expected 6 columns, got {len(row)}")
        try:
            start_s, rate, cv, shape, scale = (float(row[i]) for i in (0, 1, 2, 4, 5))
        except ValueError:
            raise StarserveError(f"{path}: line {line_no}: non-numeric field") from None
        if not row[3]:
            continue  # no traffic in this window
        if row[3] not in ARRIVAL_SAMPLERS:
            raise StarserveError(f"{path}: line {line_no}: unknown distribution {row[3]!r}")
        if not (rate >= 0 and shape > 0 and scale > 0):
            raise StarserveError(f"{path}: line {line_no}: rate, shape and scale must be positive")
        windows.append(RateWindow(client_id, start_s, rate, cv, row[3], shape, scale))
    return windows


ARRIVAL_SAMPLERS = {
    "Gamma": lambda rng, shape, scale, size: rng.gamma(shape, scale, size),
    "Weibull": lambda rng, shape, scale, size: scale * rng.weibull(shape, size),
}


def load_servegen(folder: Path | None = None) -> ServeGenData:
    """Parse every `chunk-N-{dataset.json,trace.csv}` pair in `folder` (cached per folder)."""
    folder = folder if folder is not None else data_dir() / SERVEGEN_SUBDIR
    return _load_servegen_cached(folder.resolve())


@functools.lru_cache(maxsize=4)
def _load_servegen_cached(folder: Path) -> ServeGenData:
    if not folder.is_dir():
        raise StarserveError(f"{folder}: no such directory (ServeGen DeepSeek-R1 data)")
    datasets = sorted(folder.glob("chunk-*-dataset.json"))
    if not datasets:
        raise StarserveError(f"{folder}: no chunk-N-dataset.json files")
    length_windows: list[LengthWindow] = []
    rate_windows: list[RateWindow] = []
    for dataset_path in datasets:
        match = re.fullmatch(r"chunk-(\d+)-dataset\.json", dataset_path.name)
        if match is None:
            raise StarserveError(f"{dataset_path}: unexpected file name")
        client_id = int(match.group(1))
        trace_path = folder / f"chunk-{client_id}-trace.csv"
        if not trace_path.is_file():
            raise StarserveError(f"{trace_path}: no such file (needed beside {dataset_path.name})")
        length_windows += _read_dataset(dataset_path, client_id)
        rate_windows += _read_trace(trace_path, client_id)
    return ServeGenData(tuple(length_windows), tuple(rate_windows))
