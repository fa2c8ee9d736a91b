"""The migration calls of an instance (source and destination side), mixed into
`InstanceWorker`; every engine call holds the instance's engine lock."""

from __future__ import annotations

import threading
from typing import Any

from starserve.cluster.locking import CallFirstLock
from starserve.cluster.predictions import PredictionTable
from starserve.cluster.types import KvTransfer, StageInfo
from starserve.policy.types import RequestLoad

FAULTS = ("reserve", "write_stage", "commit")  # test hooks: make that destination call fail


class MigrationEndpoint:
    """Source side: export stages, pause, resume, release. Destination side: reserve, write
    stages, commit, abort; plus a test-only fault hook for the destination calls."""

    engine: Any
    instance_id: int
    predictions: PredictionTable
    _lock: CallFirstLock
    _wakeup: threading.Event
    _faults: set[str]
    _importing: dict[str, RequestLoad]
    _staged_predictions: dict[str, Any]

    # --- source side ----------------------------------------------------------
    def export_stage(
        self, request_id: str, since_stage: int | None
    ) -> tuple[StageInfo | None, KvTransfer | None]:
        """(stage info, KV snapshot with the request's prediction), or (None, None) when the
        request is not running here."""
        with self._lock:
            if not self._is_running(request_id):
                return None, None
            return self._export_locked(request_id, since_stage)

    def _export_locked(
        self, request_id: str, since_stage: int | None
    ) -> tuple[StageInfo, KvTransfer]:
        snap = self.engine.export_request(request_id, since_stage)
        info = StageInfo(
            stage=snap.stage, num_tokens=len(snap.token_ids), num_kv_blocks=snap.num_blocks
        )
        return info, KvTransfer(snap, self.predictions.get(request_id))

    def pause_and_export(
        self, request_id: str, since_stage: int | None
    ) -> tuple[StageInfo | None, KvTransfer | None]:
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
        return any(row[0] == request_id for row in self.engine.stats().requests)

    # --- destination side -----------------------------------------------------
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

    def write_stage(self, transfer: KvTransfer) -> None:
        self._maybe_fail("write_stage")
        with self._lock:
            self.engine.write_import_stage(transfer.kv)
            self._importing[transfer.kv.request_id] = _incoming_load(transfer)
            self._staged_predictions[transfer.kv.request_id] = transfer.prediction

    def commit(self, transfer: KvTransfer) -> None:
        self._maybe_fail("commit")
        request_id = transfer.kv.request_id
        with self._lock:
            self.engine.commit_import(transfer.kv)  # writes the final stage too
            self._importing.pop(request_id, None)
            self._staged_predictions.pop(request_id, None)
            self.predictions.seed(request_id, transfer.prediction)
            self._wakeup.set()

    def grow_reservation(self, request_id: str, num_tokens: int) -> bool:
        with self._lock:
            return bool(self.engine.grow_import(request_id, num_tokens))

    def abort_import(self, request_id: str) -> None:
        """Free the reservation; a commit that landed after its caller gave up (deadline) is
        dropped silently too: the request goes on at the source."""
        with self._lock:
            self._drop_import_locked(request_id)
            if any(row[0] == request_id for row in self.engine.stats().requests):
                self.engine.release_request(request_id)
        self.predictions.forget(request_id)

    def _drop_import_locked(self, request_id: str) -> None:
        self.engine.abort_import(request_id)
        self._importing.pop(request_id, None)
        self._staged_predictions.pop(request_id, None)

    def resume_staged(
        self, request_id: str, prompt: list[int], generated: list[int], params: Any
    ) -> bool:
        """Failover onto the stages a migration copied here before its source died: keep
        their KV, prefill only the streamed tokens after them, decode on. False (the
        reservation freed) when that cannot be done: the caller replays from scratch."""
        with self._lock:
            return self._resume_staged_locked(request_id, prompt, generated, params)

    def resume_from(
        self, transfer: KvTransfer, prompt: list[int], generated: list[int], params: Any
    ) -> bool:
        """Failover onto a copy of the request's KV kept outside its dead instance (the
        prefill hand-off the controller retains): write it here as a staged import, prefill
        only the tokens streamed after it, decode on. False (nothing held) when there is no
        room now; ValueError when the request id is already in use here."""
        request_id = transfer.kv.request_id
        with self._lock:
            if not self.engine.reserve_import(request_id, transfer.kv.num_kv_tokens + 1):
                return False
            try:
                self.engine.write_import_stage(transfer.kv)
            except Exception:
                self._drop_import_locked(request_id)
                raise
            self._staged_predictions[request_id] = transfer.prediction
            return self._resume_staged_locked(request_id, prompt, generated, params)

    def _resume_staged_locked(
        self, request_id: str, prompt: list[int], generated: list[int], params: Any
    ) -> bool:
        from starserve.engine import EngineFullError

        prediction = self._staged_predictions.get(request_id)
        try:
            self.engine.resume_import(request_id, prompt, generated, params)
        except (EngineFullError, ValueError):
            self._drop_import_locked(request_id)
            return False
        self._importing.pop(request_id, None)
        self._staged_predictions.pop(request_id, None)
        self.predictions.seed(request_id, prediction)
        self._wakeup.set()
        return True


def _incoming_load(transfer: KvTransfer) -> RequestLoad:
    """A request being imported, as of the last stage written here."""
    kv = transfer.kv
    num_generated = len(kv.token_ids) - kv.num_prompt_tokens
    prediction = transfer.prediction
    remaining = None if prediction is None else prediction.aged(num_generated)
    return RequestLoad(kv.request_id, len(kv.token_ids), num_generated, remaining)
