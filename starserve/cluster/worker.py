"""A plain (Ray-free) instance: one engine, a stepping thread, and the calls actors expose.

The cluster wraps `InstanceWorker` in a Ray actor (see `starserve.cluster.launch`); tests use
it in-process. Every engine call happens under one lock so the stepping thread and the
controller's calls (hand-off, migration stages, snapshots) interleave between steps only.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starserve.cluster.locking import CallFirstLock
from starserve.cluster.predictions import PredictionTable
from starserve.cluster.types import Handoff, InstancePoll, OutputChunk, StageInfo, WorkerConfig
from starserve.policy.types import InstanceSnapshot, RequestLoad

log = logging.getLogger(__name__)

FAULTS = ("reserve", "write_stage", "commit")  # test hooks: make that destination call fail


@dataclass(slots=True)
class _Pending:
    event: threading.Event = field(default_factory=threading.Event)
    handoff: Handoff | None = None
    snapshot: Any = None
    error: str | None = None


class InstanceWorker:
    """One prefill or decode instance. Roles differ only in how requests arrive."""

    def __init__(self, config: WorkerConfig, weights: Any = None, engine: Any = None):
        """Builds its engine from `config` unless one is given (tests share engines' weights)."""
        from starserve.cluster.engine_factory import build_engine

        self.config = config
        self.instance_id = config.instance_id
        predictor = None
        if engine is None:
            engine, predictor = build_engine(config, weights)
        self.engine = engine
        self.predictions = PredictionTable(predictor)
        self._lock = CallFirstLock()
        self._wakeup = threading.Event()  # set when work may have arrived
        self._outputs: list[OutputChunk] = []
        self._out_cond = threading.Condition()
        self._pending: dict[str, _Pending] = {}
        self._faults: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.num_steps = 0

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"step-{self.instance_id}")
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def ready(self) -> int:
        return self.instance_id

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wakeup.clear()  # before looking: a later set() is never lost
            with self._lock:
                busy = self.engine.has_unfinished_requests()
                if busy:
                    try:
                        self.step_locked()
                    except Exception as err:  # an engine bug: fail its requests, keep serving
                        log.exception("instance %s: engine step failed", self.instance_id)
                        self._fail_all_locked(
                            f"engine step failed on instance {self.instance_id}: {err!r}"
                        )
            if busy:
                self._lock.let_callers_in()
            else:
                self._wakeup.wait(self.config.idle_wait_s)

    def step_once(self) -> None:
        """One engine step (tests drive instances without the thread)."""
        with self._lock:
            if self.engine.has_unfinished_requests():
                self.step_locked()

    def step_locked(self) -> None:
        outputs = self.engine.step()
        self.num_steps += 1
        self.predictions.observe(outputs)
        chunks = []
        for out in outputs:
            if out.new_token_ids or out.finished:
                chunks.append(self._chunk(out))
            if out.request_id in self._pending:
                self._hand_off(out)
            if out.finished:
                self.predictions.forget(out.request_id)
        if chunks:
            with self._out_cond:
                self._outputs.extend(chunks)
                self._out_cond.notify_all()

    def _fail_all_locked(self, message: str) -> None:
        request_ids = {rid for rid, _, _ in self.engine.stats().requests} | set(self._pending)
        chunks = []
        for request_id in request_ids:
            with contextlib.suppress(Exception):
                self.engine.abort_request(request_id)
            chunks.append(
                OutputChunk(request_id, 0, (), "", True, "abort", 0, self.instance_id, message)
            )
            pending = self._pending.pop(request_id, None)
            if pending is not None:
                pending.error = message
                pending.event.set()
        with self._out_cond:
            self._outputs.extend(chunks)
            self._out_cond.notify_all()

    def _chunk(self, out: Any) -> OutputChunk:
        return OutputChunk(
            request_id=out.request_id,
            first_token_index=out.num_generated_tokens - len(out.new_token_ids),
            token_ids=tuple(out.new_token_ids),
            text=out.new_text,
            finished=out.finished,
            finish_reason=out.finish_reason,
            num_prompt_tokens=out.num_prompt_tokens,
            instance_id=self.instance_id,
        )

    # --- serving -------------------------------------------------------------------------
    def encode(self, prompt: str | None, messages: list[dict[str, str]] | None) -> list[int]:
        """Token ids of a completion prompt or of chat messages (with the chat template)."""
        if messages is not None:
            return list(self.engine.apply_chat_template(messages))
        return list(self.engine.tokenizer.encode(prompt or ""))

    def max_model_len(self) -> int:
        return int(self.engine.config.max_model_len)

    def add_request(self, request_id: str, prompt: list[int], params: Any) -> None:
        """Run a request to completion here (raises ValueError on bad input)."""
        with self._lock:
            self.engine.add_request(request_id, prompt, params)
            self._wakeup.set()

    def prefill(self, request_id: str, prompt: list[int], params: Any) -> tuple[Handoff, Any]:
        """Compute the first token, then export the request's KV and free it here."""
        pending = _Pending()
        with self._lock:
            self._pending[request_id] = pending
            try:
                self.engine.add_request(request_id, prompt, params)
            except Exception:
                del self._pending[request_id]
                raise
            self._wakeup.set()
        pending.event.wait()
        if pending.error is not None:
            raise RuntimeError(pending.error)
        assert pending.handoff is not None
        return pending.handoff, pending.snapshot

    def _hand_off(self, out: Any) -> None:
        pending = self._pending.pop(out.request_id)
        if not out.finished:
            pending.snapshot = self.engine.export_request(out.request_id)
            self.engine.release_request(out.request_id)
        pending.handoff = Handoff(
            request_id=out.request_id,
            num_prompt_tokens=out.num_prompt_tokens,
            finished=out.finished,
            predicted_output_tokens=self.predictions.remaining(out.request_id, 1),
        )
        self.predictions.forget(out.request_id)
        pending.event.set()

    def import_request(self, snapshot: Any) -> None:
        """Continue a prefilled request here (EngineFullError when there is no room)."""
        with self._lock:
            self.engine.import_request(snapshot)
            self._wakeup.set()

    def can_import(self, num_tokens: int) -> bool:
        with self._lock:
            return bool(self.engine.can_import(num_tokens))

    def abort(self, request_id: str) -> None:
        with self._lock, contextlib.suppress(KeyError, ValueError):  # not here (anymore)
            self.engine.abort_request(request_id)

    def wait_outputs(self, timeout_s: float) -> list[OutputChunk]:
        """Chunks produced since the last call; waits up to `timeout_s` for the first one."""
        with self._out_cond:
            if not self._outputs:
                self._out_cond.wait(timeout_s)
            chunks, self._outputs = self._outputs, []
        return chunks

    def snapshot(self) -> InstanceSnapshot:
        with self._lock:
            stats = self.engine.stats()
            loads = tuple(
                RequestLoad(
                    request_id=rid,
                    num_context_tokens=ctx,
                    num_generated_tokens=gen,
                    predicted_remaining_tokens=self.predictions.remaining(rid, gen),
                )
                for rid, ctx, gen in stats.requests
            )
        return InstanceSnapshot(
            instance_id=self.instance_id,
            block_size=stats.block_size,
            num_total_blocks=stats.num_total_blocks,
            num_free_blocks=stats.num_free_blocks,
            num_waiting=stats.num_waiting,
            num_preempted=stats.num_preempted,
            requests=loads,
        )

    def stats(self) -> Any:
        with self._lock:
            return self.engine.stats()

    def poll(self) -> InstancePoll:
        """The policy snapshot plus counters only metrics need."""
        snapshot = self.snapshot()
        stats = self.stats()
        return InstancePoll(
            snapshot=snapshot,
            num_running=stats.num_running,
            num_preemptions_total=stats.num_preemptions_total,
            num_steps=self.num_steps,
        )

    # --- migration: source side ----------------------------------------------------------
    def export_stage(
        self, request_id: str, since_stage: int | None
    ) -> tuple[StageInfo | None, Any]:
        """(stage info, KV snapshot), or (None, None) when the request is not running here."""
        with self._lock:
            if not self._is_running(request_id):
                return None, None
            return self._export_locked(request_id, since_stage)

    def _export_locked(self, request_id: str, since_stage: int | None) -> tuple[StageInfo, Any]:
        snap = self.engine.export_request(request_id, since_stage)
        info = StageInfo(
            stage=snap.stage, num_tokens=len(snap.token_ids), num_kv_blocks=int(snap.kv.shape[2])
        )
        return info, snap

    def pause_and_export(
        self, request_id: str, since_stage: int | None
    ) -> tuple[StageInfo | None, Any]:
        """Pause the request and export the final stage under one lock: (None, None) when it
        is no longer running here."""
        with self._lock:
            if not self._is_running(request_id):
                return None, None
            self.engine.pause_request(request_id)
            return self._export_locked(request_id, since_stage)

    def resume(self, request_id: str) -> None:
        with self._lock:
            self.engine.resume_request(request_id)
            self._wakeup.set()

    def release(self, request_id: str) -> None:
        with self._lock:
            self.engine.release_request(request_id)
        self.predictions.forget(request_id)

    def _is_running(self, request_id: str) -> bool:
        return any(rid == request_id for rid, _, _ in self.engine.stats().requests)

    # --- migration: destination side -----------------------------------------------------
    def set_fault(self, call: str | None) -> None:
        """Test hook: make the destination call `call` fail (None clears every fault)."""
        if call is not None and call not in FAULTS:
            raise ValueError(f"unknown fault {call!r}; choose from {FAULTS}")
        self._faults = set() if call is None else {call}

    def _maybe_fail(self, call: str) -> None:
        if call in self._faults:
            raise RuntimeError(f"injected fault in {call} on instance {self.instance_id}")

    def reserve(self, request_id: str, num_tokens: int) -> bool:
        self._maybe_fail("reserve")
        with self._lock:
            return bool(self.engine.reserve_import(request_id, num_tokens))

    def write_stage(self, snapshot: Any) -> None:
        self._maybe_fail("write_stage")
        with self._lock:
            self.engine.write_import_stage(snapshot)

    def commit(self, snapshot: Any) -> None:
        self._maybe_fail("commit")
        with self._lock:
            self.engine.write_import_stage(snapshot)
            self.engine.commit_import(snapshot)
            self._wakeup.set()

    def abort_import(self, request_id: str) -> None:
        with self._lock:
            self.engine.abort_import(request_id)

    def wait_until_idle(self, timeout_s: float) -> bool:
        """True once no request is left (tests)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self.engine.has_unfinished_requests():
                    return True
            time.sleep(0.01)
        return False
