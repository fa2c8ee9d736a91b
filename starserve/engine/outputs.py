"""What the engine hands out: streamed outputs, stats, and migration snapshots."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from starserve.engine.params import SamplingParams


@dataclass(slots=True)
class RequestOutput:
    """New tokens of one request from one step (or the whole result from `Engine.generate`)."""

    request_id: str
    new_token_ids: list[int]  # tokens produced by this step (streaming)
    new_text: str  # their incremental detokenized text (stop strings honoured)
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort" | None
    num_prompt_tokens: int
    num_generated_tokens: int
    hidden_last: torch.Tensor | None = None  # [hidden] float32, last layer after the final norm
    hidden_middle: torch.Tensor | None = None  # [hidden] float32 after hidden_state_middle_layer
    # entropy (nats) of the model's untempered next-token distribution that sampled this step's
    # token; only with EngineConfig.token_entropy
    token_entropy: float | None = None


@dataclass(slots=True)
class DetokenizerState:
    """Incremental detokenization and stop-string state (travels with a migrated request)."""

    text: str = ""  # generated text so far (stop strings cut off)
    num_emitted_chars: int = 0  # characters of `text` already streamed out
    prefix_offset: int = 0  # token offsets into the generated ids (see `Detokenizer`)
    read_offset: int = 0


@dataclass(slots=True)
class RequestSnapshot:
    """A running request, KV included, as plain tensors and dataclasses (Ray moves it as is).

    `kv` is [num_layers, 2 (key, value), num_kv_heads, num_blocks, block_size, head_dim] in the
    engine's dtype (the cache's own head-major layout, so export and import copy once); block j
    of it (`kv[:, :, :, j]`) is block `first_block_index + j` of the request's block table.
    The last block may be partly filled: only the first `num_kv_tokens` token positions of the
    request are meaningful.
    """

    request_id: str
    stage: int  # increasing id of this export (per request, starting at 0)
    token_ids: list[int]  # prompt + generated so far
    num_prompt_tokens: int
    params: SamplingParams
    rng_state: torch.Tensor | None  # per-request generator state (seeded requests)
    first_block_index: int
    kv: torch.Tensor
    num_kv_tokens: int  # token positions whose KV is valid (from position 0)
    detok: DetokenizerState
    block_size: int
    arrival_s: float = 0.0  # wall time the request entered the cluster (kept across moves)

    @property
    def num_blocks(self) -> int:
        """KV blocks this snapshot carries (the blocks axis of `kv`)."""
        return int(self.kv.shape[3])


@dataclass(frozen=True, slots=True)
class EngineStats:
    """Load of an engine for the controller."""

    block_size: int
    num_total_blocks: int
    num_free_blocks: int
    num_running: int
    num_waiting: int
    num_preempted: int  # waiting requests that were preempted and will be recomputed
    num_preemptions_total: int
    # (request_id, context tokens, generated tokens, tokens it may still generate at most)
    requests: tuple[tuple[str, int, int, int], ...]
    last_step_time_s: float
    # (request_id, was preempted) of the waiting queue, in order; requests paused by a
    # migration's final stage (both are among `requests`)
    waiting: tuple[tuple[str, bool], ...] = ()
    paused: tuple[str, ...] = ()
