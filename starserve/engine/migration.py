"""Export / import of running requests: prefill -> decode hand-off and live migration.

Source side: `export_request` (repeatable: stage k+1 sends only blocks not complete at stage k),
`pause_request` before the final stage, `release_request` once the destination has it, or
`resume_request` to roll back. Destination side: `reserve_import` (query: False = no room) ->
`write_import_stage`* -> `commit_import`, or `abort_import` to roll back; `import_request` does
all of it in one call for a one-shot hand-off.
"""

from __future__ import annotations

import copy

import torch

from starserve.engine.block_manager import BlockManager, blocks_for
from starserve.engine.outputs import RequestSnapshot
from starserve.engine.params import SamplingParams
from starserve.engine.scheduler import Scheduler
from starserve.engine.sequence import Sequence, SequenceStatus


class EngineFullError(RuntimeError):
    """The destination engine has no room for an imported request."""


class MigrationMixin:
    """Mixed into `Engine`; uses its cache, block manager, scheduler and request table."""

    kv_cache: torch.Tensor
    blocks: BlockManager
    scheduler: Scheduler
    seqs: dict[str, Sequence]
    block_size: int
    max_model_len: int
    staged_kv_tokens: dict[str, int]  # request id -> KV positions its import stages wrote

    def check_new_request(
        self, request_id: str, token_ids: list[int], params: SamplingParams
    ) -> None:
        raise NotImplementedError

    def _finish(self, seq: Sequence, reason: str) -> None:
        raise NotImplementedError

    def replayed_sequence(
        self,
        request_id: str,
        prompt_ids: list[int],
        generated_ids: list[int],
        params: SamplingParams,
    ) -> Sequence:
        raise NotImplementedError

    def live_sequence(self, request_id: str) -> Sequence:
        seq = self.seqs.get(request_id)
        if seq is None:
            raise KeyError(f"unknown request {request_id!r}")
        return seq

    # --- source side ---
    def export_request(self, request_id: str, since_stage: int | None = None) -> RequestSnapshot:
        """Snapshot a request (KV of the blocks added since `since_stage`, or all); no pause."""
        seq = self.live_sequence(request_id)
        num_kv_tokens = seq.num_computed_tokens
        first_block = 0
        if since_stage is not None:
            if since_stage not in seq.stage_num_kv_tokens:
                raise ValueError(f"{request_id}: no export stage {since_stage}")
            earlier = seq.stage_num_kv_tokens[since_stage]
            # A preemption since then recomputed the KV: send everything again.
            first_block = earlier // self.block_size if earlier <= num_kv_tokens else 0
        block_ids = seq.block_table[first_block : blocks_for(num_kv_tokens, self.block_size)]
        # One copy, in the cache's own head-major layout [layers, 2, KV, blocks, bs, D].
        ids = torch.tensor(block_ids, dtype=torch.long).to(self.kv_cache.device)
        kv = self.kv_cache.index_select(3, ids)
        if kv.is_cuda:  # to pinned host memory: the snapshot travels through Ray as on CPU
            host = torch.empty(kv.shape, dtype=kv.dtype, pin_memory=True)
            kv = host.copy_(kv)
        stage = seq.next_stage
        seq.next_stage += 1
        seq.stage_num_kv_tokens[stage] = num_kv_tokens
        return RequestSnapshot(
            request_id=request_id,
            stage=stage,
            token_ids=list(seq.token_ids),
            num_prompt_tokens=seq.num_prompt_tokens,
            params=copy.copy(seq.params),
            rng_state=None if seq.generator is None else seq.generator.get_state(),
            first_block_index=first_block,
            kv=kv,
            num_kv_tokens=num_kv_tokens,
            detok=copy.copy(seq.detok),
            block_size=self.block_size,
            arrival_s=seq.arrival_s,
        )

    def pause_request(self, request_id: str) -> None:
        """Stop scheduling the request (it keeps its blocks): the final stage of a migration."""
        seq = self.live_sequence(request_id)
        if seq.status is not SequenceStatus.PAUSED:
            self.scheduler.remove(seq)
            seq.status = SequenceStatus.PAUSED

    def resume_request(self, request_id: str) -> None:
        """Schedule a paused request again (rollback of an aborted migration)."""
        seq = self.live_sequence(request_id)
        if seq.status is not SequenceStatus.PAUSED:
            return
        if seq.block_table:  # back in its place by arrival, as before the pause
            self.scheduler.add_running(seq, by_arrival=True)
        else:
            self.scheduler.add(seq)

    def release_request(self, request_id: str) -> None:
        """Forget a request that moved away: free its blocks, report nothing."""
        seq = self.live_sequence(request_id)
        self.scheduler.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = "migrated"
        del self.seqs[request_id]

    # --- destination side ---
    def can_import(self, num_tokens: int) -> bool:
        return self.blocks.can_reserve(num_tokens)

    def reserve_import(self, request_id: str, num_tokens: int) -> bool:
        """Reserve KV slots for `num_tokens` positions; False (nothing reserved) when full."""
        if request_id in self.seqs or self.blocks.reservation(request_id) is not None:
            raise ValueError(f"request id {request_id!r} is already in use")
        if not self.blocks.can_reserve(num_tokens):
            return False
        self.blocks.reserve(request_id, num_tokens)
        return True

    def grow_import(self, request_id: str, num_tokens: int) -> bool:
        """Extend a reservation to `num_tokens` positions; False (unchanged) when there is no
        room or no reservation."""
        blocks = self.blocks.reservation(request_id)
        if blocks is None:
            return False
        missing = blocks_for(num_tokens, self.block_size) - len(blocks)
        if missing > self.blocks.num_free_blocks:
            return False
        self.blocks.reserve(request_id, num_tokens)
        return True

    def write_import_stage(self, snapshot: RequestSnapshot) -> None:
        """Copy a stage's KV blocks into the reservation (grown if the request grew)."""
        blocks = self.blocks.reservation(snapshot.request_id)
        if blocks is None:
            raise ValueError(f"{snapshot.request_id}: no reservation (call reserve_import first)")
        self._check_layout(snapshot)
        num_blocks = blocks_for(snapshot.num_kv_tokens, self.block_size)
        if num_blocks > len(blocks):
            if num_blocks - len(blocks) > self.blocks.num_free_blocks:
                raise EngineFullError(f"{snapshot.request_id}: no room for {num_blocks} KV blocks")
            blocks = self.blocks.reserve(snapshot.request_id, snapshot.num_kv_tokens)
        first = snapshot.first_block_index
        target = torch.tensor(blocks[first : first + snapshot.kv.shape[3]], dtype=torch.long)
        kv = snapshot.kv.to(self.kv_cache.dtype)
        if self.kv_cache.is_cuda:  # through pinned host memory, one host-to-device copy
            kv = (kv if kv.is_pinned() else kv.pin_memory()).to(self.kv_cache.device)
            target = target.to(self.kv_cache.device)
        self.kv_cache.index_copy_(3, target, kv)
        written = self.staged_kv_tokens.get(snapshot.request_id, 0)
        self.staged_kv_tokens[snapshot.request_id] = max(written, snapshot.num_kv_tokens)

    def commit_import(self, snapshot: RequestSnapshot, by_arrival: bool = True) -> None:
        """Write the final stage and start decoding the request here. A migrated request
        (`by_arrival`) takes its place in the batch by arrival time, as in vLLM's FCFS order
        with Llumnix keeping the arrival across a migration: it is not the first preemption
        victim just because it arrived here last. A prefill hand-off joins at the end."""
        self.write_import_stage(snapshot)
        seq = Sequence(
            request_id=snapshot.request_id,
            token_ids=list(snapshot.token_ids),
            num_prompt_tokens=snapshot.num_prompt_tokens,
            params=copy.copy(snapshot.params),
            num_computed_tokens=snapshot.num_kv_tokens,
            detok=copy.copy(snapshot.detok),
            next_stage=snapshot.stage + 1,
            arrival_s=snapshot.arrival_s,
        )
        if snapshot.rng_state is not None:
            seq.generator = torch.Generator()
            seq.generator.set_state(snapshot.rng_state)
        seq.block_table = self.blocks.take_reservation(snapshot.request_id)
        self.staged_kv_tokens.pop(snapshot.request_id, None)
        self.seqs[seq.request_id] = seq
        self.scheduler.add_running(seq, by_arrival)

    def resume_import(
        self,
        request_id: str,
        prompt_ids: list[int],
        generated_ids: list[int],
        params: SamplingParams,
    ) -> int:
        """Token replay onto the KV that a migration's stages already copied here (its source
        died before the final stage): the positions the stages wrote are kept, only the
        tokens after them are prefilled, and decoding goes on from the next token. Returns the
        number of positions kept. EngineFullError (reservation kept) when the reservation
        cannot grow to the whole request; ValueError when no stage was written here."""
        written = self.staged_kv_tokens.get(request_id)
        if written is None or self.blocks.reservation(request_id) is None:
            raise ValueError(f"{request_id}: no migration stage was written here")
        params.validate()
        if len(prompt_ids) + len(generated_ids) >= self.max_model_len:
            raise ValueError(f"{request_id}: its tokens exceed max_model_len")
        seq = self.replayed_sequence(request_id, prompt_ids, generated_ids, params)
        if not self.grow_import(request_id, seq.num_tokens + 1):
            raise EngineFullError(f"{request_id}: no room for {seq.num_tokens} tokens")
        seq.num_computed_tokens = min(written, seq.num_tokens - 1)  # the last one is sampled on
        seq.was_preempted = False  # it runs at once, on its own blocks
        seq.block_table = self.blocks.take_reservation(request_id)
        del self.staged_kv_tokens[request_id]
        self.seqs[request_id] = seq
        self.scheduler.add_running(seq)
        return seq.num_computed_tokens

    def abort_import(self, request_id: str) -> None:
        """Free whatever was reserved for the request (no-op when nothing was)."""
        self.blocks.cancel_reservation(request_id)
        self.staged_kv_tokens.pop(request_id, None)

    def import_request(self, snapshot: RequestSnapshot) -> None:
        """One-shot import (prefill -> decode); EngineFullError leaves nothing allocated."""
        if not self.reserve_import(snapshot.request_id, snapshot.num_kv_tokens + 1):
            raise EngineFullError(
                f"{snapshot.request_id}: no room for {snapshot.num_kv_tokens} tokens"
            )
        try:
            self.commit_import(snapshot, by_arrival=False)
        except Exception:
            self.abort_import(snapshot.request_id)
            raise

    def _check_layout(self, snapshot: RequestSnapshot) -> None:
        expected = (*self.kv_cache.shape[:3], *self.kv_cache.shape[4:])
        got = (*snapshot.kv.shape[:3], *snapshot.kv.shape[4:])
        if snapshot.block_size != self.block_size or got != expected:
            raise ValueError(
                f"snapshot KV layout {tuple(snapshot.kv.shape)} (block size {snapshot.block_size}) "
                f"does not match this engine's {tuple(self.kv_cache.shape)}"
            )
        if len(snapshot.token_ids) >= self.max_model_len:
            raise ValueError(
                f"{snapshot.request_id}: {len(snapshot.token_ids)} tokens exceed max_model_len"
            )
