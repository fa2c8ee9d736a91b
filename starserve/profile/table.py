"""The hardware-profile file: a Vidur-style CSV of measured step times plus a metadata header.

```
# format: starserve-hardware-profile
# version: 1
# cpu: AMD EPYC 9R14
# isa: avx512_bf16
# dtype: bfloat16
# ...
phase,batch_size,num_new_tokens,num_context_tokens,num_samples,time_stats.step.median,...
decode,4,4,2048,8,31.2,...
prefill,1,512,512,1,401.7,...
```

One row per grid point, times in milliseconds as in Vidur's profiles (`time_stats.<op>.median`).
`decode` rows: a step of `batch_size` running sequences holding `num_context_tokens` KV tokens
in total (the mean over the timed steps), one new token each. `prefill` rows: a step computing
one prompt chunk of `num_new_tokens` after `num_context_tokens` already cached. The header keeps
what the numbers are only valid for: CPU model, ISA level, dtype, threads, model, KV layout,
and how many sibling engines were kept busy beside the measured one (`colocated_engines`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from starserve.errors import StarserveError

FORMAT = "starserve-hardware-profile"
VERSION = 1
COLUMNS = (
    "phase",
    "batch_size",
    "num_new_tokens",
    "num_context_tokens",
    "num_samples",
    "time_stats.step.median",
    "time_stats.step.mean",
    "time_stats.step.min",
)
MEDIAN_MS = "time_stats.step.median"
# header keys every profile carries (all strings in the file; numbers parsed on read)
META_KEYS = (
    "cpu", "isa", "arch", "dtype", "num_threads", "model", "num_layers",
    "kv_bytes_per_token", "block_size", "kv_capacity_tokens", "max_num_seqs",
    "max_num_batched_tokens", "colocated_engines", "created_utc", "load_average",
)  # fmt: skip
INT_META = ("num_threads", "num_layers", "kv_bytes_per_token", "block_size",
            "kv_capacity_tokens", "max_num_seqs", "max_num_batched_tokens",
            "colocated_engines")  # fmt: skip


@dataclass(frozen=True, slots=True)
class HardwareProfile:
    """A measured profile: metadata (`META_KEYS`) and the table of grid points."""

    meta: dict[str, str]
    rows: pd.DataFrame = field(repr=False)

    def int_meta(self, key: str) -> int:
        return int(self.meta[key])

    def phase(self, name: str) -> pd.DataFrame:
        return self.rows[self.rows["phase"] == name]

    def describe(self) -> str:
        m = self.meta
        return f"{m['model']} {m['dtype']} on {m['cpu']} [isa {m['isa']}, {m['num_threads']} thread(s)]"


def write_profile(profile: HardwareProfile, path: Path) -> None:
    lines = [f"# format: {FORMAT}", f"# version: {VERSION}"]
    lines += [f"# {key}: {profile.meta[key]}" for key in META_KEYS]
    body = profile.rows.loc[:, list(COLUMNS)].to_csv(index=False, float_format="%.4f")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n" + body)


def read_profile(path: str | Path) -> HardwareProfile:
    """Read a profile; anything malformed is a one-line `StarserveError` naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise StarserveError(
            f"{path}: no such hardware profile (make one with `starserve profile`)"
        )
    text = path.read_text()
    meta: dict[str, str] = {}
    body_lines = []
    for line in text.splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            meta[key.strip()] = value.strip()
        elif line.strip():
            body_lines.append(line)
    if meta.get("format") != FORMAT or meta.get("version") != str(VERSION):
        raise StarserveError(f"{path}: not a {FORMAT} version {VERSION} file")
    missing = [key for key in META_KEYS if key not in meta]
    if missing:
        raise StarserveError(f"{path}: header lacks {', '.join(missing)}")
    try:
        for key in INT_META:
            int(meta[key])
        rows = pd.read_csv(io.StringIO("\n".join(body_lines)))
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise StarserveError(f"{path}: malformed profile ({err})") from None
    if tuple(rows.columns) != COLUMNS:
        raise StarserveError(f"{path}: columns must be {','.join(COLUMNS)}")
    for phase, need in (("decode", 2), ("prefill", 2)):
        if (rows["phase"] == phase).sum() < need:
            raise StarserveError(f"{path}: needs at least {need} {phase} rows")
    if not (rows[MEDIAN_MS] > 0).all():
        raise StarserveError(f"{path}: step times must be > 0 ms")
    return HardwareProfile({key: meta[key] for key in META_KEYS}, rows)
