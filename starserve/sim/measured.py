"""A latency model read from a measured hardware profile (`starserve profile`), e.g. our CPU engine.

Decode: t(B, K) = fixed(B) + g * K, the simulator's shape (linear in the batch's KV tokens K,
which is what its closed-form chunks need). g is the slope of step time in K pooled over every
batch size (a least-squares fit with one intercept per batch size); fixed(B) is that intercept,
interpolated piecewise-linearly in B and extrapolated along the last segment.

Prefill: t = f(N) + a * sum(new * (cached + new / 2)) over an iteration's chunks, N their new
tokens. a (seconds per query-key pair, causal attention) is the slope in new * cached of the
rows that had tokens cached; f(N) is the measured time of an uncached chunk of N tokens minus
its own attention a * N^2 / 2, interpolated in N. Several prompts in one iteration therefore
pay one forward over their summed tokens plus each prompt's own attention.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from starserve.profile.table import MEDIAN_MS, HardwareProfile, read_profile
from starserve.sim.latency import PiecewiseLinear


def pooled_slope(groups: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Least-squares slope shared by all groups, each with its own intercept."""
    num = den = 0.0
    for x, y in groups:
        if len(x) < 2:
            continue
        dx = x - x.mean()
        num += float((dx * (y - y.mean())).sum())
        den += float((dx * dx).sum())
    return max(0.0, num / den) if den > 0 else 0.0


def _knots(x: np.ndarray, y: np.ndarray) -> PiecewiseLinear:
    order = np.argsort(x)
    xs, ys = x[order], y[order]
    unique = np.unique(xs)
    knots_y = [float(np.mean(ys[xs == v])) for v in unique]
    if len(unique) == 1:  # one point: a flat line
        return PiecewiseLinear((float(unique[0]), float(unique[0]) + 1.0), (knots_y[0], knots_y[0]))
    return PiecewiseLinear(tuple(float(v) for v in unique), tuple(knots_y))


@dataclass(slots=True)
class MeasuredLatencyModel:
    """`LatencyModel` of one measured profile (seconds everywhere)."""

    profile: HardwareProfile
    fixed_s: PiecewiseLinear  # decode fixed(B)
    s_per_kv_token: float  # decode g
    prefill_tokens_s: PiecewiseLinear  # f(N)
    s_per_attention_pair: float  # prefill a
    kv_bytes_per_token: int

    @staticmethod
    def from_profile(profile: HardwareProfile) -> MeasuredLatencyModel:
        decode = profile.phase("decode")
        seconds = decode[MEDIAN_MS].to_numpy(float) / 1000.0
        batch = decode["batch_size"].to_numpy(float)
        context = decode["num_context_tokens"].to_numpy(float)
        groups = [(context[batch == b], seconds[batch == b]) for b in np.unique(batch)]
        g = pooled_slope(groups)
        fixed = _knots(batch, seconds - g * context)

        prefill = profile.phase("prefill")
        p_seconds = prefill[MEDIAN_MS].to_numpy(float) / 1000.0
        new = prefill["num_new_tokens"].to_numpy(float)
        cached = prefill["num_context_tokens"].to_numpy(float)
        pairs = new * (cached + new / 2.0)
        a = pooled_slope([(pairs[new == n], p_seconds[new == n]) for n in np.unique(new)])
        uncached = cached == 0
        tokens_s = _knots(new[uncached], p_seconds[uncached] - a * pairs[uncached])
        return MeasuredLatencyModel(
            profile, fixed, g, tokens_s, a, profile.int_meta("kv_bytes_per_token")
        )

    def decode_fixed_s(self, batch_size: int) -> float:
        return max(0.0, self.fixed_s(batch_size))

    @property
    def decode_s_per_kv_token(self) -> float:
        return self.s_per_kv_token

    def decode_step_s(self, batch_size: int, num_kv_tokens: float) -> float:
        return self.decode_fixed_s(batch_size) + self.s_per_kv_token * num_kv_tokens

    def prefill_s(self, chunks: Sequence[tuple[int, int]]) -> float:
        num_tokens = 0
        pairs = 0.0
        for new, cached in chunks:
            num_tokens += new
            pairs += new * (cached + new / 2.0)
        if num_tokens == 0:
            return 0.0
        return max(0.0, self.prefill_tokens_s(num_tokens)) + self.s_per_attention_pair * pairs


@functools.lru_cache(maxsize=8)
def measured_latency_model(path: str) -> MeasuredLatencyModel:
    """The latency model of the profile file at `path` (read once per process)."""
    return MeasuredLatencyModel.from_profile(read_profile(Path(path)))
