"""The migration calls of an instance (source and destination side), mixed into
`InstanceWorker`; every engine call holds the instance's engine lock."""

from __future__ import annotations

import threading
from typing import Any

from starserve.cluster.locking import CallFirstLock
from starserve.cluster.predictions import PredictionTable
from starserve.cluster.types import StageInfo

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

    # --- source side ----------------------------------------------------------
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
            stage=snap.stage, num_tokens=len(snap.token_ids), num_kv_blocks=snap.num_blocks
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

    def write_stage(self, snapshot: Any) -> None:
        self._maybe_fail("write_stage")
        with self._lock:
            self.engine.write_import_stage(snapshot)

    def commit(self, snapshot: Any) -> None:
        self._maybe_fail("commit")
        with self._lock:
            self.engine.commit_import(snapshot)  # writes the final stage too
            self._wakeup.set()

    def grow_reservation(self, request_id: str, num_tokens: int) -> bool:
        with self._lock:
            return bool(self.engine.grow_import(request_id, num_tokens))

    def abort_import(self, request_id: str) -> None:
        """Free the reservation; a commit that landed after its caller gave up (deadline) is
        dropped silently too: the request goes on at the source."""
        with self._lock:
            self.engine.abort_import(request_id)
            if any(row[0] == request_id for row in self.engine.stats().requests):
                self.engine.release_request(request_id)
        self.predictions.forget(request_id)
