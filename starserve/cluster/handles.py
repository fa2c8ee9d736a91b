"""The async face of an instance that the controller and the server program against.

`LocalInstance` adapts an in-process `InstanceWorker` (tests); `starserve.cluster.launch`
adapts a Ray actor the same way, passing KV snapshots as object-store references.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from starserve.cluster.types import Handoff, InstancePoll, OutputChunk, StageInfo
from starserve.cluster.worker import InstanceWorker


class InstanceHandle(Protocol):
    """Everything the controller and server call on an instance (a migration endpoint too)."""

    instance_id: int

    async def prefill(
        self, request_id: str, prompt: list[int], params: Any, generated: list[int] | None = None
    ) -> tuple[Handoff, Any]: ...  # generated: token replay (the first token is the next one)
    async def import_request(self, payload: Any) -> bool: ...  # False: no room
    async def replay(
        self, request_id: str, prompt: list[int], generated: list[int], params: Any
    ) -> bool: ...  # False: no room
    async def resume_staged(
        self, request_id: str, prompt: list[int], generated: list[int], params: Any
    ) -> bool: ...  # False: no staged KV here (or no room): replay from scratch
    async def resume_from(
        self, payload: Any, prompt: list[int], generated: list[int], params: Any
    ) -> bool: ...  # failover onto a kept copy of the KV; False: no room now
    async def poll(self) -> InstancePoll: ...
    async def watch_liveness(self, host: str, port: int) -> int: ...  # -> its incarnation
    async def abort(self, request_id: str) -> None: ...
    async def wait_outputs(self, timeout_s: float) -> list[OutputChunk]: ...
    async def export_stage(
        self, request_id: str, since_stage: int | None
    ) -> tuple[StageInfo, Any] | None: ...
    async def pause_and_export(
        self, request_id: str, since_stage: int | None
    ) -> tuple[StageInfo, Any] | None: ...
    async def resume(self, request_id: str) -> None: ...
    async def release(self, request_id: str) -> None: ...
    async def reserve(self, request_id: str, num_tokens: int) -> bool: ...
    async def write_stage(self, payload: Any) -> None: ...
    async def commit(self, payload: Any) -> None: ...
    async def grow_reservation(self, request_id: str, num_tokens: int) -> bool: ...
    async def abort_import(self, request_id: str) -> None: ...


class CallingInstance:
    """The `InstanceHandle` calls that forward one-to-one to an `InstanceWorker` method,
    written once: a transport defines `_call` (threads in-process, Ray remotely) and
    overrides what moves KV differently (prefill and stage exports)."""

    instance_id: int

    async def _call(self, name: str, *args: Any) -> Any:
        raise NotImplementedError

    async def prefill(
        self, request_id: str, prompt: list[int], params: Any, generated: list[int] | None = None
    ) -> tuple[Handoff, Any]:
        result: tuple[Handoff, Any] = await self._call(
            "prefill", request_id, prompt, params, generated
        )
        return result

    async def import_request(self, payload: Any) -> bool:
        return bool(await self._call("import_request", payload))

    async def replay(
        self, request_id: str, prompt: list[int], generated: list[int], params: Any
    ) -> bool:
        return bool(await self._call("replay", request_id, prompt, generated, params))

    async def resume_staged(
        self, request_id: str, prompt: list[int], generated: list[int], params: Any
    ) -> bool:
        return bool(await self._call("resume_staged", request_id, prompt, generated, params))

    async def resume_from(
        self, payload: Any, prompt: list[int], generated: list[int], params: Any
    ) -> bool:
        return bool(await self._call("resume_from", payload, prompt, generated, params))

    async def watch_liveness(self, host: str, port: int) -> int:
        return int(await self._call("watch_liveness", host, port))

    async def poll(self) -> InstancePoll:
        result: InstancePoll = await self._call("poll")
        return result

    async def abort(self, request_id: str) -> None:
        await self._call("abort", request_id)

    async def wait_outputs(self, timeout_s: float) -> list[OutputChunk]:
        result: list[OutputChunk] = await self._call("wait_outputs", timeout_s)
        return result

    async def export_stage(
        self, request_id: str, since_stage: int | None
    ) -> tuple[StageInfo, Any] | None:
        info, snap = await self._call("export_stage", request_id, since_stage)
        return None if info is None else (info, snap)

    async def pause_and_export(
        self, request_id: str, since_stage: int | None
    ) -> tuple[StageInfo, Any] | None:
        info, snap = await self._call("pause_and_export", request_id, since_stage)
        return None if info is None else (info, snap)

    async def resume(self, request_id: str) -> None:
        await self._call("resume", request_id)

    async def release(self, request_id: str) -> None:
        await self._call("release", request_id)

    async def reserve(self, request_id: str, num_tokens: int) -> bool:
        return bool(await self._call("reserve", request_id, num_tokens))

    async def write_stage(self, payload: Any) -> None:
        await self._call("write_stage", payload)

    async def commit(self, payload: Any) -> None:
        await self._call("commit", payload)

    async def grow_reservation(self, request_id: str, num_tokens: int) -> bool:
        return bool(await self._call("grow_reservation", request_id, num_tokens))

    async def abort_import(self, request_id: str) -> None:
        await self._call("abort_import", request_id)


class LocalInstance(CallingInstance):
    """An in-process worker behind the async interface (blocking calls run in threads)."""

    def __init__(self, worker: InstanceWorker):
        self.worker = worker
        self.instance_id = worker.instance_id

    async def _call(self, name: str, *args: Any) -> Any:
        return await asyncio.to_thread(getattr(self.worker, name), *args)
