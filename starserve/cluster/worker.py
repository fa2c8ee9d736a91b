"""A plain (Ray-free) instance: one engine, a stepping thread, and the calls actors expose.

The cluster wraps `InstanceWorker` in a Ray actor (see `starserve.cluster.launch`); tests use
it in-process. Every engine call happens under one lock so the stepping thread and the
controller's calls (hand-off, migration stages, snapshots) interleave between steps only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from starserve.cluster.locking import CallFirstLock
from starserve.cluster.migration_endpoint import MigrationEndpoint
from starserve.cluster.predictions import PredictionTable
from starserve.cluster.types import Handoff, InstancePoll, KvTransfer, OutputChunk, WorkerConfig
from starserve.mechanism.snapshot import WaitingRequest, build_snapshot
from starserve.policy.types import InstanceSnapshot, RequestLoad

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    event: threading.Event = field(default_factory=threading.Event)
    handoff: Handoff | None = None
    snapshot: Any = None
    error: str | None = None


class InstanceWorker(MigrationEndpoint):
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
        self.predictions = PredictionTable(predictor, refresh=config.predictor_refresh)
        self._lock = CallFirstLock()
        self._wakeup = threading.Event()  # set when work may have arrived
        self._outputs: list[OutputChunk] = []
        self._out_cond = threading.Condition()
        self._pending: dict[str, _Pending] = {}
        self._faults: set[str] = set()
        self._importing: dict[str, RequestLoad] = {}  # migration imports, by the last stage
        self._staged_predictions: dict[str, Any] = {}  # migration imports' latest predictions
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._liveness: Any = None  # socket to the controller, open for this process's life
        self.num_steps = 0

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Start the stepping thread (idempotent: a restart routine may call it again)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._loop, name=f"step-{self.instance_id}")
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.drop_liveness()

    def watch_liveness(self, host: str, port: int) -> int:
        """Open this process's liveness connection to the controller (once: a process keeps
        its first one); returns the incarnation it announced. See cluster/liveness.py."""
        from starserve.cluster.liveness import connect

        if self._liveness is None:
            self._liveness = connect(host, port, self.instance_id, os.getpid())
        return os.getpid()

    def drop_liveness(self) -> None:
        """Close the liveness connection: to the controller, this process is gone (a clean
        stop, or a test standing in for a crash)."""
        if self._liveness is not None:
            self._liveness.close()
            self._liveness = None

    def ready(self) -> int:
        return self.instance_id

    def num_pending_prefills(self) -> int:
        """Prefill calls waiting for their first token (no lock: tests watch it mid-step)."""
        return len(self._pending)

    def pid(self) -> int:
        """The process this instance runs in (fault tests kill it)."""
        return os.getpid()

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
                self.predictions.finish(out)
        if chunks:
            with self._out_cond:
                self._outputs.extend(chunks)
                self._out_cond.notify_all()

    def _fail_all_locked(self, message: str) -> None:
        request_ids = {row[0] for row in self.engine.stats().requests} | set(self._pending)
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
        return list(self.engine.encode(prompt or ""))

    def max_model_len(self) -> int:
        """The context length this instance accepts (prompt + output tokens)."""
        return int(self.engine.max_model_len)

    def vocab_size(self) -> int:
        """Prompt token ids must lie in [0, vocab_size) (the server checks before admitting)."""
        return int(self.engine.weights.config.vocab_size)

    def add_request(self, request_id: str, prompt: list[int], params: Any) -> None:
        """Run a request to completion here (raises ValueError on bad input)."""
        with self._lock:
            self.engine.add_request(request_id, prompt, params)
            self._wakeup.set()

    def prefill(
        self, request_id: str, prompt: list[int], params: Any, generated: list[int] | None = None
    ) -> tuple[Handoff, KvTransfer | None]:
        """Compute the first token, then export the request's KV (with its prediction) and
        free it here. With `generated` (token replay of a request whose decode instance
        died), prompt + those tokens are prefilled and the token computed is the next one."""
        pending = _Pending()
        with self._lock:
            self._pending[request_id] = pending
            try:
                if generated:
                    self.engine.replay_request(request_id, prompt, generated, params)
                else:
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
        budget = self._token_budget(out.request_id)
        prediction = self.predictions.get(out.request_id)
        if not out.finished:
            pending.snapshot = KvTransfer(self.engine.export_request(out.request_id), prediction)
            self.engine.release_request(out.request_id)
        pending.handoff = Handoff(
            request_id=out.request_id,
            num_prompt_tokens=out.num_prompt_tokens,
            finished=out.finished,
            predicted_output_tokens=self.predictions.remaining(
                out.request_id,
                out.num_generated_tokens,
                None if budget is None else budget + out.num_generated_tokens,
            ),
            prediction=prediction,
        )
        self.predictions.forget(out.request_id)
        pending.event.set()

    def _token_budget(self, request_id: str) -> int | None:
        return next((row[3] for row in self.engine.stats().requests if row[0] == request_id), None)

    def import_request(self, transfer: KvTransfer) -> bool:
        """Continue a prefilled request here, with the prediction it carries; False (nothing
        taken) when there is no room.

        "Full" is a status, not an exception: it crosses Ray as a plain bool, so callers never
        match an error by its name."""
        from starserve.engine import EngineFullError

        with self._lock:
            try:
                self.engine.import_request(transfer.kv)
            except EngineFullError:
                return False
            self.predictions.seed(transfer.kv.request_id, transfer.prediction)
            self._wakeup.set()
        return True

    def replay(self, request_id: str, prompt: list[int], generated: list[int], params: Any) -> bool:
        """Token replay of a request whose instance died: recompute prompt + `generated` and
        continue from the next token. False (nothing taken) when there is no room now."""
        num_tokens = len(prompt) + len(generated) + 1
        with self._lock:
            if not self.engine.can_import(num_tokens):
                return False
            self.engine.replay_request(request_id, prompt, generated, params)
            self._wakeup.set()
        return True

    def warm_up(self) -> int:
        """One real engine step on a throwaway request: an instance (re)joins the policies'
        view only once it has computed a token."""
        from starserve.engine import SamplingParams

        request_id = f"warm-up-{self.instance_id}"
        with self._lock:
            self.engine.add_request(request_id, [0], SamplingParams(max_tokens=1, temperature=0))
            while request_id in self.engine.seqs:
                self.step_locked()  # publishes other requests' tokens as usual
        return self.instance_id

    def can_import(self, num_tokens: int) -> bool:
        with self._lock:
            return bool(self.engine.can_import(num_tokens))

    def abort(self, request_id: str) -> None:
        """Drop the request if it is here (a waiting `prefill` call then raises)."""
        with self._lock:
            with contextlib.suppress(KeyError, ValueError):  # not here (anymore)
                self.engine.abort_request(request_id)
            self._drop_import_locked(request_id)  # staged KV a failover no longer needs
            pending = self._pending.pop(request_id, None)
        if pending is not None:
            pending.error = f"request {request_id} aborted"
            pending.event.set()

    def wait_outputs(self, timeout_s: float) -> list[OutputChunk]:
        """Chunks produced since the last call; waits up to `timeout_s` for the first one."""
        with self._out_cond:
            if not self._outputs:
                self._out_cond.wait(timeout_s)
            chunks, self._outputs = self._outputs, []
        return chunks

    def snapshot(self) -> InstanceSnapshot:
        """This instance under the shared snapshot contract (`starserve.mechanism.snapshot`):
        running requests decode, waiting ones and migration imports are incoming, a request
        paused by its final migration stage is in neither."""
        with self._lock:  # the stepping thread updates predictions under it
            stats = self.engine.stats()
            importing = tuple(self._importing.values())
            loads = {
                rid: RequestLoad(rid, ctx, gen, self.predictions.remaining(rid, gen, budget))
                for rid, ctx, gen, budget in stats.requests
            }
        preempted = dict(stats.waiting)  # request id -> was preempted, in queue order
        paused = set(stats.paused)
        waiting = [
            WaitingRequest(
                loads[rid],
                -(-loads[rid].num_context_tokens // stats.block_size),
                was_preempted,
            )
            for rid, was_preempted in preempted.items()
        ]
        decoding = tuple(
            load for rid, load in loads.items() if rid not in preempted and rid not in paused
        )
        return build_snapshot(
            self.instance_id,
            stats.block_size,
            stats.num_total_blocks,
            stats.num_free_blocks,
            decoding,
            waiting,
            importing,
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
            incarnation=os.getpid(),
            predictor_live_mae_tokens=self.predictions.live_mae(),
        )
