"""A tiny stand-in for `starserve.engine.Engine`, only for the migration state machine's
unit tests (the CI tests of the cluster and server run the real engine).

Its "model" makes each next token a function of the KV cache contents (not of the token
list), so a migration that copies a block wrong changes the output and fails the test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from starserve.engine import EngineFullError  # the worker turns it into a "full" status

EOS = 2


@dataclass(slots=True)
class FakeParams:
    max_tokens: int = 16


@dataclass(slots=True)
class FakeOutput:
    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_generated_tokens: int
    hidden_last: Any = None


@dataclass(slots=True)
class FakeSnapshot:
    request_id: str
    stage: int
    token_ids: list[int]
    num_prompt_tokens: int
    params: FakeParams
    first_block_index: int
    kv: torch.Tensor
    num_kv_tokens: int

    @property
    def num_blocks(self) -> int:
        return int(self.kv.shape[2])  # this fake keeps blocks on axis 2


@dataclass(frozen=True, slots=True)
class FakeStats:
    block_size: int
    num_total_blocks: int
    num_free_blocks: int
    num_running: int
    num_waiting: int
    num_preempted: int
    num_preemptions_total: int
    requests: tuple[tuple[str, int, int, int], ...]
    last_step_time_s: float = 0.0
    waiting: tuple[tuple[str, bool], ...] = ()  # this fake never queues
    paused: tuple[str, ...] = ()


@dataclass(slots=True)
class _Req:
    request_id: str
    token_ids: list[int]
    num_prompt_tokens: int
    params: FakeParams
    block_ids: list[int] = field(default_factory=list)
    num_kv_tokens: int = 0
    paused: bool = False
    importing: bool = False
    stage: int = -1
    stage_kv_tokens: dict[int, int] = field(default_factory=dict)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens


class FakeEngine:
    def __init__(self, num_blocks: int = 64, block_size: int = 4):
        self.block_size = block_size
        self.kv = torch.zeros(1, 2, num_blocks, block_size, 1, 1)
        self.free_block_ids = list(range(num_blocks))
        self.requests: dict[str, _Req] = {}
        self.max_model_len = 256
        self.replayed: list[str] = []  # request ids given to replay_request, in order
        self.staged_kv_tokens: dict[str, int] = {}  # positions the import stages wrote
        self.resumed: dict[str, int] = {}  # resume_import: request id -> positions kept

    # --- serving ---
    def encode(self, prompt: str) -> list[int]:
        return [ord(c) % 90 + 3 for c in prompt]

    def add_request(self, request_id: str, prompt: list[int], params: FakeParams) -> None:
        if request_id in self.requests:
            raise ValueError("duplicate id")
        self.requests[request_id] = _Req(request_id, list(prompt), len(prompt), params)

    def replay_request(
        self, request_id: str, prompt: list[int], generated: list[int], params: FakeParams
    ) -> None:
        """Token replay: the KV of prompt + `generated` is recomputed at the next step."""
        if request_id in self.requests:
            raise ValueError("duplicate id")
        self.requests[request_id] = _Req(request_id, [*prompt, *generated], len(prompt), params)
        self.replayed.append(request_id)

    def has_unfinished_requests(self) -> bool:
        return any(not r.paused and not r.importing for r in self.requests.values())

    def abort_request(self, request_id: str) -> None:
        self.release_request(request_id)

    def step(self) -> list[FakeOutput]:
        outputs = []
        for req in [r for r in self.requests.values() if not r.paused and not r.importing]:
            self._fill_kv(req)
            kv_sum = sum(self._kv_value(req, pos) for pos in range(req.num_kv_tokens))
            token = int(kv_sum * 7 + req.num_kv_tokens) % 97 + 3
            req.token_ids.append(token)
            done = req.num_generated >= req.params.max_tokens
            outputs.append(
                FakeOutput(req.request_id, [token], f" t{token}", done, "length" if done else None,
                           req.num_prompt_tokens, req.num_generated)
            )  # fmt: skip
            if done:
                self.release_request(req.request_id)
        return outputs

    def _fill_kv(self, req: _Req) -> None:
        while req.num_kv_tokens < len(req.token_ids):
            pos = req.num_kv_tokens
            if pos // self.block_size >= len(req.block_ids):
                req.block_ids.append(self.free_block_ids.pop(0))
            block, offset = req.block_ids[pos // self.block_size], pos % self.block_size
            self.kv[:, :, block, offset] = float(req.token_ids[pos])
            req.num_kv_tokens += 1

    def _kv_value(self, req: _Req, pos: int) -> float:
        block, offset = req.block_ids[pos // self.block_size], pos % self.block_size
        return float(self.kv[0, 0, block, offset, 0, 0])

    def stats(self) -> FakeStats:
        running = [r for r in self.requests.values() if not r.importing]
        return FakeStats(
            block_size=self.block_size,
            num_total_blocks=self.kv.shape[2],
            num_free_blocks=len(self.free_block_ids),
            num_running=len(running),
            num_waiting=0,
            num_preempted=0,
            num_preemptions_total=0,
            requests=tuple(
                (
                    r.request_id,
                    len(r.token_ids),
                    r.num_generated,
                    r.params.max_tokens - r.num_generated,
                )
                for r in running
            ),
            paused=tuple(r.request_id for r in running if r.paused),
        )

    # --- migration ---
    def export_request(self, request_id: str, since_stage: int | None = None) -> FakeSnapshot:
        req = self.requests[request_id]
        self._fill_kv(req)
        first = 0 if since_stage is None else req.stage_kv_tokens[since_stage] // self.block_size
        req.stage += 1
        req.stage_kv_tokens[req.stage] = req.num_kv_tokens
        blocks = req.block_ids[first:]
        return FakeSnapshot(request_id, req.stage, list(req.token_ids), req.num_prompt_tokens,
                            req.params, first, self.kv[:, :, blocks].clone(), req.num_kv_tokens)  # fmt: skip

    def pause_request(self, request_id: str) -> None:
        self.requests[request_id].paused = True

    def resume_request(self, request_id: str) -> None:
        self.requests[request_id].paused = False

    def release_request(self, request_id: str) -> None:
        req = self.requests.pop(request_id, None)
        if req is not None:
            self.free_block_ids.extend(req.block_ids)

    def reserve_import(self, request_id: str, num_tokens: int) -> bool:
        num_blocks = -(-num_tokens // self.block_size)
        if num_blocks > len(self.free_block_ids):
            return False
        req = _Req(request_id, [], 0, FakeParams(), importing=True)
        req.block_ids = [self.free_block_ids.pop(0) for _ in range(num_blocks)]
        self.requests[request_id] = req
        return True

    def grow_import(self, request_id: str, num_tokens: int) -> bool:
        req = self.requests.get(request_id)
        if req is None or not req.importing:
            return False
        missing = -(-num_tokens // self.block_size) - len(req.block_ids)
        if missing > len(self.free_block_ids):
            return False
        req.block_ids += [self.free_block_ids.pop(0) for _ in range(max(0, missing))]
        return True

    def write_import_stage(self, snap: FakeSnapshot) -> None:
        req = self.requests[snap.request_id]
        self.staged_kv_tokens[snap.request_id] = snap.num_kv_tokens
        for i in range(snap.kv.shape[2]):
            self.kv[:, :, req.block_ids[snap.first_block_index + i]] = snap.kv[:, :, i]

    def commit_import(self, snap: FakeSnapshot) -> None:
        self.write_import_stage(snap)
        req = self.requests[snap.request_id]
        req.token_ids, req.num_prompt_tokens, req.params = (
            list(snap.token_ids),
            snap.num_prompt_tokens,
            snap.params,
        )
        req.num_kv_tokens = snap.num_kv_tokens
        needed = -(-len(req.token_ids) // self.block_size)
        self.free_block_ids.extend(req.block_ids[needed:])
        del req.block_ids[needed:]
        req.importing = False

    def can_import(self, num_tokens: int) -> bool:
        return -(-num_tokens // self.block_size) <= len(self.free_block_ids)

    def import_request(self, snap: FakeSnapshot) -> None:
        if not self.reserve_import(snap.request_id, len(snap.token_ids)):
            raise EngineFullError(f"no room for {snap.request_id}")
        self.commit_import(snap)

    def resume_import(
        self, request_id: str, prompt: list[int], generated: list[int], params: FakeParams
    ) -> int:
        req = self.requests.get(request_id)
        if req is None or not req.importing or request_id not in self.staged_kv_tokens:
            raise ValueError(f"{request_id}: no migration stage was written here")
        token_ids = [*prompt, *generated]
        if not self.grow_import(request_id, len(token_ids) + 1):
            raise EngineFullError(f"no room for {request_id}")
        req.token_ids, req.num_prompt_tokens, req.params = token_ids, len(prompt), params
        req.num_kv_tokens = min(self.staged_kv_tokens.pop(request_id), len(token_ids) - 1)
        req.importing = False
        self.resumed[request_id] = req.num_kv_tokens
        return req.num_kv_tokens

    def abort_import(self, request_id: str) -> None:
        self.staged_kv_tokens.pop(request_id, None)
        self.release_request(request_id)
