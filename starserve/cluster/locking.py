"""The engine lock of an instance."""

from __future__ import annotations

import threading
import time


class CallFirstLock:
    """The engine lock: a caller waiting for it goes before the stepping thread's next step.

    A plain lock is not fair: the stepping thread would release and re-take it at once and
    starve the controller's calls (a migration stage could wait for many steps).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.num_waiting = 0
        self._count = threading.Lock()

    def __enter__(self) -> None:
        with self._count:
            self.num_waiting += 1
        self.lock.acquire()
        with self._count:
            self.num_waiting -= 1

    def __exit__(self, *exc: object) -> None:
        self.lock.release()

    def let_callers_in(self) -> None:
        """Called by the stepping thread between steps."""
        while self.num_waiting:
            time.sleep(0.0002)
