"""Iteration latency of a simulated instance, calibrated on Vidur's measured GPU kernels.

Decode iteration with batch B holding K KV tokens:   t = fixed(B) + K * s_per_kv_token
  fixed(B) = layers * (layer_ops(B) + 2 * all_reduce(B)) + emb(B) + lm_head(B) + overhead
  s_per_kv_token = KV bytes per token / TP / (HBM bandwidth * attention efficiency)
(roofline: decode attention reads every KV byte once; Vidur's attention profiles are not
shipped). Prefill iteration over chunks: layer_ops of the chunk tokens + causal-attention FLOPs
at a fraction of peak. `layer_ops(n)` is a piecewise-linear fit of the summed per-operator
medians (`mlp.csv`: everything in a layer but attention) at knots spread over the profile.

Decode time is linear in K for a fixed batch, which is what lets the simulator advance many
iterations in O(1). Any other model (e.g. one fitted on our CPU engine) only has to implement
the `LatencyModel` protocol.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from starserve.paths import data_dir
from starserve.sim.hardware import GPUS, MODELS, GpuSpec, ModelSpec, operator_scale

LAYER_OPS = (
    "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
    "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add",
)  # fmt: skip
NUM_KNOTS = 40
ATTENTION_BANDWIDTH_EFFICIENCY = 0.8  # paged decode attention reaches ~80% of HBM bandwidth
PREFILL_ATTENTION_FLOPS_EFFICIENCY = 0.5  # FlashAttention-2 forward at ~50% of dense peak
ITERATION_OVERHEAD_S = 0.5e-3  # scheduler + sampling + launch per iteration (vLLM, CUDA graphs)


class LatencyModel(Protocol):
    """What the simulator asks of a latency model."""

    kv_bytes_per_token: int

    def decode_fixed_s(self, batch_size: int) -> float:
        """Decode iteration time with `batch_size` sequences, excluding KV reads."""
        ...

    @property
    def decode_s_per_kv_token(self) -> float:
        """Extra decode iteration time per KV token held by the batch."""
        ...

    def prefill_s(self, chunks: Sequence[tuple[int, int]]) -> float:
        """Iteration time for prefill chunks given as (new tokens, tokens already cached)."""
        ...


@dataclass(frozen=True, slots=True)
class PiecewiseLinear:
    """y(x) by linear interpolation between knots, linear extrapolation past the last one."""

    knots_x: tuple[float, ...]
    knots_y: tuple[float, ...]

    def __call__(self, x: float) -> float:
        xs, ys = self.knots_x, self.knots_y
        if x <= xs[0]:
            return ys[0]
        i = bisect.bisect_right(xs, x) - 1
        if i >= len(xs) - 1:
            i = len(xs) - 2  # extrapolate along the last segment
        return ys[i] + (ys[i + 1] - ys[i]) * (x - xs[i]) / (xs[i + 1] - xs[i])

    @staticmethod
    def fit(x: np.ndarray, y: np.ndarray, num_knots: int = NUM_KNOTS) -> PiecewiseLinear:
        """Knots at quantiles of x, each knot's y the median of profile points nearby."""
        order = np.argsort(x)
        x, y = x[order], y[order]
        unique_x = np.unique(x)
        idx = np.unique(np.linspace(0, len(unique_x) - 1, num_knots).round().astype(int))
        knots_x = unique_x[idx]
        knots_y = [float(np.median(y[x == kx])) for kx in knots_x]
        return PiecewiseLinear(tuple(float(v) for v in knots_x), tuple(knots_y))


def _profile_path(gpu: GpuSpec, profile: str) -> Path:
    return (
        data_dir()
        / "vidur/profiling/compute"
        / gpu.profile_dir
        / "meta-llama"
        / profile
        / "mlp.csv"
    )


@functools.lru_cache(maxsize=32)
def profile_points(
    gpu_name: str, profile: str, tensor_parallel: int, scale: tuple[float, ...] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(num_tokens, per-layer ms, embedding ms) measured in one Vidur profile at this TP;
    `scale` multiplies each of LAYER_OPS' times (a derived model shape)."""
    frame = pd.read_csv(_profile_path(GPUS[gpu_name], profile))
    frame = frame[frame["num_tensor_parallel_workers"] == tensor_parallel]
    if frame.empty:
        raise ValueError(f"no {profile} profile at TP={tensor_parallel} on {gpu_name}")
    factors = scale or (1.0,) * len(LAYER_OPS)
    layer = sum(
        frame[f"time_stats.{op}.median"] * f for op, f in zip(LAYER_OPS, factors, strict=True)
    )
    return (
        frame["num_tokens"].to_numpy(float),
        np.asarray(layer, dtype=float),
        frame["time_stats.emb.median"].to_numpy(float),
    )


def _transferred_points(gpu_name: str, spec: str, tensor_parallel: int) -> tuple[np.ndarray, ...]:
    """`base*num/den`: base's profile on this GPU scaled by num/den measured on A100."""
    base, ratio = spec.split("*")
    num, den = ratio.split("/")
    x, layer, emb = profile_points(gpu_name, base, tensor_parallel)
    nx, nlayer, _ = profile_points("a100", num, tensor_parallel)
    dx, dlayer, _ = profile_points("a100", den, tensor_parallel)
    scale = PiecewiseLinear.fit(nx, nlayer)
    scale_den = PiecewiseLinear.fit(dx, dlayer)
    factor = np.array([scale(v) / scale_den(v) for v in x])
    return x, layer * factor, emb


def model_profile_points(
    model: ModelSpec, gpu: GpuSpec, tensor_parallel: int
) -> tuple[np.ndarray, ...]:
    spec = model.profile_dirs[gpu.name]
    if model.kernels_from is not None:
        scale = operator_scale(model, MODELS[model.kernels_from])
        return profile_points(gpu.name, spec, tensor_parallel, tuple(scale[op] for op in LAYER_OPS))
    if "*" in spec:
        return _transferred_points(gpu.name, spec, tensor_parallel)
    return profile_points(gpu.name, spec, tensor_parallel)


@functools.lru_cache(maxsize=16)
def all_reduce_fit(network_dir: str, num_workers: int) -> PiecewiseLinear | None:
    """All-reduce ms vs message bytes on `num_workers` GPUs of one node (None for TP=1)."""
    if num_workers == 1:
        return None
    path = data_dir() / "vidur/profiling/network" / network_dir / "all_reduce.csv"
    frame = pd.read_csv(path)
    frame = frame[
        (frame["num_workers"] == num_workers) & (frame["devices_per_node"] == num_workers)
    ]
    if frame.empty:
        frame = pd.read_csv(path)
        frame = frame[frame["num_workers"] == num_workers]
    return PiecewiseLinear.fit(
        frame["size"].to_numpy(float), frame["time_stats.all_reduce.median"].to_numpy(float)
    )


@dataclass(slots=True)
class ProfiledLatencyModel:
    """The Vidur-profile + roofline latency model of one model on TP GPUs of one kind."""

    model: ModelSpec
    gpu: GpuSpec
    tensor_parallel: int
    layer_ms: PiecewiseLinear
    emb_ms: PiecewiseLinear
    all_reduce_ms: PiecewiseLinear | None
    kv_bytes_per_token: int
    overhead_s: float = ITERATION_OVERHEAD_S
    # `_tokens_s` by token count: a pure function the simulator asks for over and over
    _tokens_s_memo: dict[int, float] = field(default_factory=dict, repr=False, compare=False)

    @staticmethod
    def build(model_name: str, gpu_name: str, tensor_parallel: int = 1) -> ProfiledLatencyModel:
        model, gpu = MODELS[model_name], GPUS[gpu_name]
        x, layer, emb = model_profile_points(model, gpu, tensor_parallel)
        return ProfiledLatencyModel(
            model=model,
            gpu=gpu,
            tensor_parallel=tensor_parallel,
            layer_ms=PiecewiseLinear.fit(x, layer),
            emb_ms=PiecewiseLinear.fit(x, emb),
            all_reduce_ms=all_reduce_fit(gpu.network_dir, tensor_parallel),
            kv_bytes_per_token=model.kv_bytes_per_token,
        )

    def _tokens_s(self, num_tokens: int) -> float:
        """Everything proportional to a forward pass over `num_tokens` but attention."""
        seconds = self._tokens_s_memo.get(num_tokens)
        if seconds is None:
            seconds = self._tokens_s_memo[num_tokens] = self._compute_tokens_s(num_tokens)
        return seconds

    def _compute_tokens_s(self, num_tokens: int) -> float:
        ms = self.model.num_layers * self.layer_ms(num_tokens) + self.emb_ms(num_tokens)
        if self.all_reduce_ms is not None:
            message_bytes = num_tokens * self.model.hidden_size * 2
            ms += 2 * self.model.num_layers * self.all_reduce_ms(message_bytes)
        return ms / 1000.0

    def _lm_head_s(self, num_sequences: int) -> float:
        weights = self.model.vocab_size * self.model.hidden_size * 2 / self.tensor_parallel
        flops = 2.0 * num_sequences * weights / 2
        return max(weights / self.gpu.hbm_bandwidth_bytes_per_s, flops / self.gpu.peak_bf16_flops)

    def decode_fixed_s(self, batch_size: int) -> float:
        return self._tokens_s(batch_size) + self._lm_head_s(batch_size) + self.overhead_s

    @property
    def decode_s_per_kv_token(self) -> float:
        per_gpu_bytes = self.kv_bytes_per_token / self.tensor_parallel
        return per_gpu_bytes / (self.gpu.hbm_bandwidth_bytes_per_s * ATTENTION_BANDWIDTH_EFFICIENCY)

    def prefill_s(self, chunks: Sequence[tuple[int, int]]) -> float:
        heads_dim = self.model.num_heads * self.model.head_dim / self.tensor_parallel
        num_tokens = 0
        attention_flops = 0.0
        for new, cached in chunks:  # one pass: the simulator calls this per prefill iteration
            num_tokens += new
            attention_flops += 4.0 * heads_dim * new * (cached + new / 2.0)
        if num_tokens == 0:
            return 0.0
        attention_s = (
            self.model.num_layers
            * attention_flops
            / (self.gpu.peak_bf16_flops * PREFILL_ATTENTION_FLOPS_EFFICIENCY)
        )
        return (
            self._tokens_s(num_tokens)
            + attention_s
            + self._lm_head_s(len(chunks))
            + self.overhead_s
        )
