"""The engine: `step()` = schedule -> run -> postprocess, plus request management.

Everything lives on the instance (cache, queues, generators): several engines can share a
process and one loaded model. Migration (export/import) is in `migration.py`.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import torch

from starserve.engine.block_manager import BlockManager, blocks_for
from starserve.engine.config import EngineConfig
from starserve.engine.detokenizer import Detokenizer
from starserve.engine.memory import keep_freed_memory
from starserve.engine.migration import MigrationMixin
from starserve.engine.outputs import EngineStats, RequestOutput
from starserve.engine.params import SamplingParams
from starserve.engine.runner import ModelRunner
from starserve.engine.sampler import advance_generator, predictive_entropy, sample
from starserve.engine.scheduler import ScheduledChunk, Scheduler
from starserve.engine.sequence import Sequence, SequenceStatus
from starserve.model.llama import ForwardOutput
from starserve.model.loader import DTYPES, LoadedModel, load_model


class Engine(MigrationMixin):
    """A paged-KV LLM engine with continuous batching; see docs/engine.md."""

    def __init__(self, config: EngineConfig, weights: LoadedModel | None = None) -> None:
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        if config.keep_freed_memory:
            keep_freed_memory()
        weights = weights or load_model(config.model, config.dtype, config.device)
        if weights.dtype != config.dtype:
            raise ValueError(f"weights are {weights.dtype}, config asks for {config.dtype}")
        if weights.device != config.device:
            raise ValueError(f"weights are on {weights.device}, config asks for {config.device}")
        mc = weights.config
        if config.hidden_state_middle_layer is not None and not (
            0 <= config.hidden_state_middle_layer < mc.num_layers
        ):
            raise ValueError(f"hidden_state_middle_layer must be in [0, {mc.num_layers})")
        self.config = config
        self.weights = weights
        self.tokenizer: Any = weights.tokenizer
        self.detokenizer = Detokenizer(weights.tokenizer)
        self.block_size = config.block_size
        self.kv_cache = torch.zeros(
            # Head-major: [layers, 2, KV, blocks, block_size, D] (see docs/engine.md).
            (mc.num_layers, 2, mc.num_kv_heads, self._num_blocks(), config.block_size, mc.head_dim),
            dtype=DTYPES[config.dtype],
            device=config.device,
        )
        self.blocks = BlockManager(self.kv_cache.shape[3], config.block_size)
        self.scheduler = Scheduler(self.blocks, config.max_num_seqs, config.max_num_batched_tokens)
        self.runner = ModelRunner(
            weights.model, self.kv_cache, config.block_size, config.hidden_state_middle_layer
        )
        self.seqs: dict[str, Sequence] = {}  # every live request: waiting, running or paused
        self.staged_kv_tokens: dict[str, int] = {}  # migration imports: positions written
        self.generator = torch.Generator().manual_seed(config.seed)
        self.eos_token_ids = frozenset(mc.eos_token_ids)
        # Capped by the cache too: a request that outgrows the whole cache would preempt and
        # recompute itself forever, so it must end at "length" instead.
        self.max_model_len = min(
            config.max_model_len,
            mc.max_position_embeddings,
            self.blocks.num_blocks * config.block_size,
        )
        self.last_step_time_s = 0.0
        self._pending: list[RequestOutput] = []  # aborts reported by the next step
        self._auto_ids = itertools.count()

    def _num_blocks(self) -> int:
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        mc = self.weights.config
        bytes_per_block = (
            mc.num_layers
            * 2
            * self.config.block_size
            * mc.kv_size
            * DTYPES[self.config.dtype].itemsize
        )
        return max(1, int(self.config.kv_cache_memory_mb * 2**20 // bytes_per_block))

    @property
    def kv_bytes_per_token(self) -> int:
        mc = self.weights.config
        return mc.num_layers * 2 * mc.kv_size * self.kv_cache.element_size()

    # --- requests ---
    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat, ending with the assistant's turn prompt."""
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(t) for t in ids]

    def encode(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a prompt (text is tokenized without adding special tokens)."""
        if isinstance(prompt, str):
            return [int(t) for t in self.tokenizer.encode(prompt, add_special_tokens=False)]
        return [int(t) for t in prompt]

    def check_new_request(
        self, request_id: str, token_ids: list[int], params: SamplingParams
    ) -> None:
        """Raise ValueError when a request cannot be served; nothing is changed."""
        params.validate()
        if request_id in self.seqs or self.blocks.reservation(request_id) is not None:
            raise ValueError(f"request id {request_id!r} is already in use")
        if not token_ids:
            raise ValueError("empty prompt")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(
                f"prompt has {len(token_ids)} tokens; max_model_len={self.max_model_len} leaves no "
                "room to generate"
            )
        vocab = self.weights.config.vocab_size
        if min(token_ids) < 0 or max(token_ids) >= vocab:
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        if blocks_for(len(token_ids) + 1, self.block_size) > self.blocks.num_blocks:
            raise ValueError(f"prompt of {len(token_ids)} tokens does not fit the KV cache")

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> None:
        """Queue a request; ValueError on bad input (the engine keeps serving the others)."""
        token_ids = self.encode(prompt)
        self.check_new_request(request_id, token_ids, params)
        generator = None
        if params.seed is not None:
            generator = torch.Generator().manual_seed(params.seed)
        seq = Sequence(request_id, token_ids, len(token_ids), params, generator)
        self.seqs[request_id] = seq
        self.scheduler.add(seq)

    def replay_request(
        self,
        request_id: str,
        prompt_ids: list[int],
        generated_ids: list[int],
        params: SamplingParams,
    ) -> None:
        """Continue a request whose instance died: recompute the KV of prompt + the tokens it
        already produced and go on from the next one, as a preempted request would. The
        detokenizer replays those tokens (their text was streamed already) and a seeded
        generator skips their draws, so the continuation is what the lost instance would have
        produced. ValueError on bad input, like `add_request`."""
        self.check_new_request(request_id, [*prompt_ids, *generated_ids], params)
        seq = self.replayed_sequence(request_id, prompt_ids, generated_ids, params)
        self.seqs[request_id] = seq
        self.scheduler.add(seq)

    def replayed_sequence(
        self,
        request_id: str,
        prompt_ids: list[int],
        generated_ids: list[int],
        params: SamplingParams,
    ) -> Sequence:
        """A sequence that goes on after `generated_ids` (no KV yet): its detokenizer has
        replayed them and a seeded generator has skipped their draws (the caller checked the
        request)."""
        token_ids = [*prompt_ids, *generated_ids]
        generator = None
        if params.seed is not None:
            generator = torch.Generator().manual_seed(params.seed)
            advance_generator(generator, 0 if params.greedy else len(generated_ids))
        seq = Sequence(request_id, token_ids, len(prompt_ids), params, generator)
        for end in range(1, len(generated_ids) + 1):
            self.detokenizer.update(seq.detok, generated_ids[:end], params.stop)
            self.detokenizer.emit(seq.detok, params.stop, False)
        seq.was_preempted = bool(generated_ids)
        return seq

    def abort_request(self, request_id: str) -> None:
        """Stop a request and free its blocks; the next `step()` reports it finished ("abort")."""
        seq = self.live_sequence(request_id)
        self._finish(seq, "abort")
        self._pending.append(self._output(seq, [], ""))

    def has_unfinished_requests(self) -> bool:
        """Work left for `step()` (paused requests do not count: they wait for a decision)."""
        scheduler = self.scheduler
        return bool(scheduler.running) or bool(scheduler.waiting) or bool(self._pending)

    # --- the step ---
    def step(self) -> list[RequestOutput]:
        """Schedule -> run -> postprocess; returns one output per request that produced tokens."""
        start = time.perf_counter()
        outputs, self._pending = self._pending, []
        chunks = self.scheduler.schedule()
        if chunks:
            forward = self.runner.run(chunks)
            sampling = [chunk.seq for chunk in chunks if chunk.samples]
            tokens = sample(
                forward.logits,
                [seq.params for seq in sampling],
                [seq.generator or self.generator for seq in sampling],
            )
            entropies = None
            if self.config.token_entropy and sampling:
                entropies = predictive_entropy(forward.logits).tolist()
            outputs.extend(self._postprocess(chunks, tokens, forward, entropies))
        self.last_step_time_s = time.perf_counter() - start
        return outputs

    def _postprocess(
        self,
        chunks: list[ScheduledChunk],
        tokens: list[int],
        forward: ForwardOutput,
        entropies: list[float] | None = None,
    ) -> list[RequestOutput]:
        outputs: list[RequestOutput] = []
        row = 0
        for chunk in chunks:
            seq = chunk.seq
            samples = chunk.samples
            seq.num_computed_tokens = chunk.start + chunk.num_tokens
            if not samples:
                continue
            output = self._append_token(seq, tokens[row])
            interval = self.config.hidden_state_interval
            if interval and (output.num_generated_tokens - 1) % interval == 0:
                # Host copies: outputs cross processes (Ray) and feed the CPU predictor.
                output.hidden_last = forward.hidden_last[row].to("cpu", copy=True)
                if forward.hidden_middle is not None:
                    output.hidden_middle = forward.hidden_middle[row].to("cpu", copy=True)
            if entropies is not None:
                output.token_entropy = entropies[row]
            outputs.append(output)
            row += 1
        return outputs

    def _append_token(self, seq: Sequence, token_id: int) -> RequestOutput:
        seq.token_ids.append(token_id)
        params = seq.params
        hit_stop = self.detokenizer.update(seq.detok, seq.generated_ids, params.stop)
        is_eos = token_id in self.eos_token_ids and not params.ignore_eos
        reason = None
        if hit_stop or is_eos or token_id in params.stop_token_ids:
            reason = "stop"
        elif seq.num_generated_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            reason = "length"
        if reason is not None:
            self._finish(seq, reason)
        text = self.detokenizer.emit(seq.detok, params.stop, reason is not None)
        return self._output(seq, [token_id], text)

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.scheduler.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        self.seqs.pop(seq.request_id, None)

    def _output(self, seq: Sequence, new_ids: list[int], text: str) -> RequestOutput:
        return RequestOutput(
            request_id=seq.request_id,
            new_token_ids=new_ids,
            new_text=text,
            finished=seq.status.is_finished,
            finish_reason=seq.finish_reason,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_generated_tokens=seq.num_generated_tokens,
        )

    # --- convenience and stats ---
    def generate(
        self, prompts: list[str | list[int]], params: SamplingParams
    ) -> list[RequestOutput]:
        """Run the prompts to completion (with whatever else is queued); results in order."""
        ids = [f"generate-{next(self._auto_ids)}" for _ in prompts]
        for request_id, prompt in zip(ids, prompts, strict=True):
            self.add_request(request_id, prompt, params)
        results = {rid: RequestOutput(rid, [], "", False, None, 0, 0) for rid in ids}
        while any(not results[rid].finished for rid in ids):
            for out in self.step():
                total = results.get(out.request_id)
                if total is None:
                    continue
                total.new_token_ids.extend(out.new_token_ids)
                total.new_text += out.new_text
                total.finished, total.finish_reason = out.finished, out.finish_reason
                total.num_prompt_tokens = out.num_prompt_tokens
                total.num_generated_tokens = out.num_generated_tokens
                if out.hidden_last is not None:
                    total.hidden_last, total.hidden_middle = out.hidden_last, out.hidden_middle
        return [results[rid] for rid in ids]

    def token_budget(self, seq: Sequence) -> int:
        """Tokens `seq` may still generate: its max_tokens, or the context length, ends it."""
        by_max_tokens = seq.params.max_tokens - seq.num_generated_tokens
        return max(0, min(by_max_tokens, self.max_model_len - seq.num_tokens))

    def stats(self) -> EngineStats:
        waiting = self.scheduler.waiting
        return EngineStats(
            block_size=self.block_size,
            num_total_blocks=self.blocks.num_blocks,
            num_free_blocks=self.blocks.num_free_blocks,
            num_running=len(self.scheduler.running),
            num_waiting=len(waiting),
            num_preempted=sum(1 for seq in waiting if seq.was_preempted),
            num_preemptions_total=self.scheduler.num_preemptions_total,
            requests=tuple(
                (rid, seq.num_tokens, seq.num_generated_tokens, self.token_budget(seq))
                for rid, seq in self.seqs.items()
            ),
            last_step_time_s=self.last_step_time_s,
            waiting=tuple((seq.request_id, seq.was_preempted) for seq in waiting),
            paused=tuple(
                rid for rid, seq in self.seqs.items() if seq.status is SequenceStatus.PAUSED
            ),
        )
