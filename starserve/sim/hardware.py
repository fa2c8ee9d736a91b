"""Model and GPU descriptions the latency model and KV capacity are computed from.

Numbers are public specifications: model shapes from each model's `config.json` on the Hugging
Face hub, GPU HBM bandwidth and dense BF16 peak from NVIDIA's data sheets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

BYTES_PER_PARAM_BF16 = 2
GIB = 1024**3


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A decoder-only transformer's shape."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    num_params: float
    # Vidur profile folder(s) under vidur/profiling/compute/<gpu>/meta-llama/ per GPU
    profile_dirs: dict[str, str]
    intermediate_size: int = 0  # MLP width (only read where kernels are scaled, below)
    # no profile of this model: the named MODELS entry's kernels, each operator scaled by
    # how much more work it does at this shape (`operator_scale`)
    kernels_from: str | None = None

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V, every layer, all KV heads, BF16."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * BYTES_PER_PARAM_BF16

    @property
    def weight_bytes(self) -> float:
        return self.num_params * BYTES_PER_PARAM_BF16


@dataclass(frozen=True, slots=True)
class GpuSpec:
    name: str
    memory_bytes: int
    hbm_bandwidth_bytes_per_s: float
    peak_bf16_flops: float
    profile_dir: str  # vidur/profiling/compute/<profile_dir>
    network_dir: str  # vidur/profiling/network/<network_dir>


MODELS: dict[str, ModelSpec] = {
    # meta-llama/Meta-Llama-3-8B config.json: 32 layers, 4096 hidden, 32 heads, 8 KV heads.
    # No H100 profile of it is shipped: its H100 kernels are the Llama-2-7B H100 profile scaled
    # by the Llama-3-8B / Llama-2-7B ratio measured on A100 (see latency.py).
    "llama3-8b": ModelSpec(
        "llama3-8b", 32, 4096, 32, 8, 128, 128256, 8.03e9,
        {"a100": "Meta-Llama-3-8B", "h100": "Llama-2-7b-hf*Meta-Llama-3-8B/Llama-2-7b-hf"},
    ),
    # meta-llama/Llama-2-7b-hf: 32 layers, 4096 hidden, 32 heads, 32 KV heads (no GQA).
    "llama2-7b": ModelSpec(
        "llama2-7b", 32, 4096, 32, 32, 128, 32000, 6.74e9,
        {"a100": "Llama-2-7b-hf", "h100": "Llama-2-7b-hf"},
    ),
    # meta-llama/Meta-Llama-3-70B: 80 layers, 8192 hidden, 64 heads, 8 KV heads; its layer
    # shapes equal Llama-2-70B's, whose H100 profile is shipped.
    "llama3-70b": ModelSpec(
        "llama3-70b", 80, 8192, 64, 8, 128, 128256, 70.6e9,
        {"a100": "Meta-Llama-3-70B", "h100": "Llama-2-70b-hf"},
    ),
    # deepseek-ai/DeepSeek-R1-Distill-Qwen-7B config.json (Qwen2): 28 layers, 3584 hidden, 28
    # heads, 4 KV heads of 128 (56 KiB of KV per token), MLP 18944, vocab 152064, 7.62e9
    # parameters. No Vidur profile: Llama-2-7B's measured kernels, scaled per operator.
    "qwen2-7b": ModelSpec(
        "qwen2-7b", 28, 3584, 28, 4, 128, 152064, 7.62e9,
        {"a100": "Llama-2-7b-hf", "h100": "Llama-2-7b-hf"},
        intermediate_size=18944, kernels_from="llama2-7b",
    ),
}  # fmt: skip
MODELS["llama2-7b"] = dataclasses.replace(MODELS["llama2-7b"], intermediate_size=11008)

GPUS: dict[str, GpuSpec] = {
    # H100 SXM5 80GB: 3.35 TB/s HBM3, 989 TFLOPS dense BF16.
    "h100": GpuSpec("h100", 80 * GIB, 3.35e12, 989e12, "h100", "h100_dgx"),
    # A100 SXM4 80GB: 2.039 TB/s HBM2e, 312 TFLOPS dense BF16.
    "a100": GpuSpec("a100", 80 * GIB, 2.039e12, 312e12, "a100", "a100_dgx"),
}


def operator_scale(target: ModelSpec, source: ModelSpec) -> dict[str, float]:
    """Per-layer work of each Vidur operator at `target`'s shape over `source`'s. Linear layers
    scale with their weight count (decode at small batch reads every weight once, large
    batches do 2 FLOPs per weight and token: both proportional); element-wise operators with
    the width they touch."""
    q = lambda m: m.num_heads * m.head_dim  # noqa: E731
    kv = lambda m: m.num_kv_heads * m.head_dim  # noqa: E731
    ratio = lambda f: f(target) / f(source)  # noqa: E731
    hidden = ratio(lambda m: m.hidden_size)
    mlp = ratio(lambda m: m.hidden_size * m.intermediate_size)
    return {
        "input_layernorm": hidden,
        "attn_pre_proj": ratio(lambda m: m.hidden_size * (q(m) + 2 * kv(m))),  # Q, K, V
        "attn_rope": ratio(lambda m: q(m) + kv(m)),  # rotates Q and K
        "attn_post_proj": ratio(lambda m: q(m) * m.hidden_size),  # O
        "post_attention_layernorm": hidden,
        "mlp_up_proj": mlp,  # gate + up
        "mlp_act": ratio(lambda m: m.intermediate_size),
        "mlp_down_proj": mlp,
        "add": hidden,
    }


def kv_capacity_tokens(
    model: ModelSpec,
    gpu: GpuSpec,
    tensor_parallel: int,
    gpu_memory_utilization: float = 0.9,
    activation_reserve_bytes: float = 2 * GIB,
) -> int:
    """KV tokens one instance holds: vLLM's budget (utilisation × memory) minus weights and an
    activation reserve per GPU, divided by the per-token KV bytes (sharded over TP GPUs)."""
    budget = tensor_parallel * (
        gpu.memory_bytes * gpu_memory_utilization - activation_reserve_bytes
    )
    free_bytes = budget - model.weight_bytes
    if free_bytes <= 0:
        raise ValueError(f"{model.name} does not fit on {tensor_parallel}x {gpu.name}")
    return int(free_bytes // model.kv_bytes_per_token)
