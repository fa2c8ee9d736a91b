"""Process death noticed in milliseconds: a liveness connection per instance (no Ray here).

Each instance process opens one TCP connection to the controller and keeps it for its whole
life. When the process dies (SIGKILL, an OOM kill, a crash) its kernel closes the connection,
so the controller reads end-of-file at once; Ray reports the same death 0.3-1.2 s later on a
loaded 2-core host (it waits for the raylet and the GCS). A hung but living process keeps
its connection open: the snapshot timeout catches that one, and a host that vanishes without
closing anything is caught by Ray or the timeout as before.

The first line an instance sends is "<instance id> <incarnation>" (its process id): a closed
connection counts only if it belongs to the instance's latest process, so the late EOF of a
process that was already replaced never takes the new one down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 5.0


class LivenessListener:
    """Controller side: accepts instances' connections and calls `on_closed(instance_id)`
    when the latest process of an instance closes its connection."""

    def __init__(self, on_closed: Callable[[int], None]):
        self.on_closed = on_closed
        self._latest: dict[int, int] = {}  # instance id -> incarnation of its newest process
        self._server: asyncio.Server | None = None

    async def start(self, host: str) -> tuple[str, int]:
        """Listen on an ephemeral port of `host`; returns the address instances connect to."""
        self._server = await asyncio.start_server(self._serve, host, 0)
        port = self._server.sockets[0].getsockname()[1]
        return host, int(port)

    def incarnation(self, instance_id: int) -> int | None:
        return self._latest.get(instance_id)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello = await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT_S)
            instance_id, incarnation = (int(x) for x in hello.split())
        except (TimeoutError, ValueError, ConnectionError):
            writer.close()
            return
        self._latest[instance_id] = incarnation
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):  # an instance sends nothing more: wait for EOF
                pass
        writer.close()
        if self._latest.get(instance_id) == incarnation:
            self.on_closed(instance_id)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


def connect(host: str, port: int, instance_id: int, incarnation: int) -> socket.socket:
    """Instance side: open the liveness connection and say who this is. The caller keeps the
    socket for the life of its process (closing it means "this process is gone")."""
    link = socket.create_connection((host, port), timeout=HELLO_TIMEOUT_S)
    link.sendall(f"{instance_id} {incarnation}\n".encode())
    return link
