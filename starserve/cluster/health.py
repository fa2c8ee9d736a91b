"""Which instances are up: failure bookkeeping, lost requests, and restarts (no Ray here).

The controller declares an instance dead (its actor died, or it sent no snapshot for too
long); `Health` takes it out of the policies' view at once, counts the failure, hands the
requests that were on it to the server (`wait_lost`), and restarts it through its handle's
`restart` when it has one (the Ray adapter does: Ray restarts the actor, the instance
answers a warm-up step, then it rejoins).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Health:
    restart_timeout_s: float = 180.0  # one restart attempt (process start + model load)
    max_restart_attempts: int = 3
    on_failure: Callable[[int], Awaitable[list[str]]] | None = None  # -> lost request ids
    on_restarted: Callable[[Any], Awaitable[None]] | None = None  # before it rejoins
    num_failures: Counter[int] = field(default_factory=Counter)
    num_restarts: Counter[int] = field(default_factory=Counter)
    _down: set[int] = field(default_factory=set)
    _last_seen_s: dict[int, float] = field(default_factory=dict)
    _incarnations: dict[int, int] = field(default_factory=dict)
    _lost: list[str] = field(default_factory=list)
    _lost_event: asyncio.Event | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def is_up(self, instance_id: int) -> bool:
        return instance_id not in self._down

    def down_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self._down))

    def seen(self, instance_id: int) -> None:
        self._last_seen_s[instance_id] = time.monotonic()

    def restarted(self, instance_id: int, poll: Any) -> bool:
        """True when the poll comes from a new process (the old one died between polls)."""
        known = self._incarnations.setdefault(instance_id, poll.incarnation)
        return bool(known != poll.incarnation)

    def silent_for_s(self, instance_id: int) -> float:
        """Seconds since the instance's last snapshot (0 before its first poll failed)."""
        last = self._last_seen_s.setdefault(instance_id, time.monotonic())
        return time.monotonic() - last

    def fail(self, handle: Any, role: str, reason: str, kill: bool) -> None:
        """Mark `handle`'s instance down now; fail its requests over and restart it."""
        instance_id = handle.instance_id
        self._down.add(instance_id)
        self.num_failures[instance_id] += 1
        log.warning("%s instance %s failed: %s", role, instance_id, reason)
        task = asyncio.create_task(self._recover(handle, role, kill))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recover(self, handle: Any, role: str, kill: bool) -> None:
        instance_id = handle.instance_id
        if role == "decode" and self.on_failure is not None:
            self._publish(await self.on_failure(instance_id))
        restart = getattr(handle, "restart", None)
        if restart is None:
            return  # in-process instances stay down
        for attempt in range(1, self.max_restart_attempts + 1):
            try:
                await asyncio.wait_for(restart(kill), self.restart_timeout_s)
                break
            except Exception as err:
                log.warning("restart %d of instance %s failed: %r", attempt, instance_id, err)
                kill = True
                await asyncio.sleep(1.0)
        else:
            return
        self.num_restarts[instance_id] += 1
        if self.on_restarted is not None:
            await self.on_restarted(handle)
        self._incarnations.pop(instance_id, None)  # the next poll tells the new process id
        self.seen(instance_id)
        self._down.discard(instance_id)
        log.warning("%s instance %s is back after a warm-up step", role, instance_id)

    def _publish(self, lost: list[str]) -> None:
        self._lost.extend(lost)
        self._event().set()

    def _event(self) -> asyncio.Event:
        if self._lost_event is None:  # created on the running loop, not at construction
            self._lost_event = asyncio.Event()
        return self._lost_event

    async def wait_lost(self, timeout_s: float) -> list[str]:
        """Request ids lost since the last call; waits up to `timeout_s` for the first one."""
        event = self._event()
        if not self._lost:
            event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout_s)
        lost, self._lost = self._lost, []
        return lost

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
