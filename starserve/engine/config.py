"""Engine settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from starserve.config import Settings


class EngineConfig(Settings):
    """One engine instance: model, KV cache size, batching limits, hidden-state tap."""

    model: str | None = Field(
        None, description="GGUF file or Hugging Face folder; None = bundled SmolLM2-135M-Instruct"
    )
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="weights, activations, KV")
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="where weights, paged KV and sampling live (cuda: PyTorch attention)"
    )
    block_size: int = Field(16, ge=1, description="tokens per KV block")
    num_kv_blocks: int | None = Field(
        None, ge=1, description="KV blocks; None = as many as fit in kv_cache_memory_mb"
    )
    kv_cache_memory_mb: float = Field(
        512, gt=0, description="KV cache size when num_kv_blocks=None"
    )
    max_num_seqs: int = Field(64, ge=1, description="running requests at most")
    max_num_batched_tokens: int = Field(
        1024, ge=1, description="tokens per step (chunked-prefill budget)"
    )
    max_model_len: int = Field(2048, ge=2, description="prompt + generated tokens at most")
    num_threads: int | None = Field(None, ge=1, description="torch threads; None = leave as is")
    hidden_state_interval: int = Field(
        16, ge=0, description="tap the last-layer hidden state every k generated tokens (0 = off)"
    )
    hidden_state_middle_layer: int | None = Field(
        None, ge=0, description="also tap the residual stream after this layer (TRAIL baseline)"
    )
    token_entropy: bool = Field(
        False,
        description="report each sampled token's predictive entropy (nats, of the untempered "
        "logits) in RequestOutput.token_entropy (predictor collection)",
    )
    seed: int = Field(0, description="seed of the engine generator (requests without a seed)")
    keep_freed_memory: bool = Field(
        True, description="keep freed memory in the heap (fast KV snapshots; per process)"
    )
