"""Start the cluster and the HTTP server around it (the `starserve serve` command and tests)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starserve.cluster.config import ClusterConfig
from starserve.server.app import ServerSettings, build_app


def default_model_name(model: str | None) -> str:
    """The id /v1/models lists: the model file's stem, or the bundled model's name."""
    return Path(model).stem if model else "SmolLM2-135M-Instruct"


@dataclass(frozen=True, slots=True)
class ServeOptions:
    cluster: ClusterConfig
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_num_requests: int = 256
    ray_address: str | None = None
    model_name: str | None = None

    def settings(self) -> ServerSettings:
        return ServerSettings(
            model_name=self.model_name or default_model_name(self.cluster.model),
            api_key=self.api_key,
            max_num_requests=self.max_num_requests,
        )


@dataclass(frozen=True, slots=True)
class Listener:
    """One HTTP front end (several may share one cluster, e.g. with different API keys)."""

    settings: ServerSettings
    host: str
    port: int


def _servers(
    cluster: Any, listeners: Sequence[Listener], on_ready: Callable[[], Awaitable[None]] | None
) -> list[Any]:
    import uvicorn

    from starserve.server.backend import ClusterBackend

    backend = ClusterBackend(cluster)  # one backend: it owns the instances' output pumps
    servers = []
    for index, listener in enumerate(listeners):
        app = build_app(backend, listener.settings)
        if index == 0:
            app.router.on_startup.append(backend.start)
            app.router.on_shutdown.append(backend.stop)
            if on_ready is not None:
                app.router.on_startup.append(on_ready)
        config = uvicorn.Config(app, host=listener.host, port=listener.port, log_level="warning")
        servers.append(uvicorn.Server(config))
    return servers


def serve_forever(options: ServeOptions, announce: Callable[[str], None] = print) -> None:
    """Launch the cluster, serve until interrupted, then stop everything."""
    from starserve.cluster.launch import launch_cluster

    cluster = launch_cluster(options.cluster, options.ray_address)

    async def ready() -> None:
        announce(f"starserve: {', '.join(cluster.describe())} (policy {options.cluster.policy})")
        announce(f"starserve listening on http://{options.host}:{options.port} (OpenAI API at /v1)")

    listener = Listener(options.settings(), options.host, options.port)
    try:
        _servers(cluster, [listener], ready)[0].run()
    finally:
        cluster.shutdown()


@contextlib.contextmanager
def serving(cluster: Any, listeners: Sequence[Listener], timeout_s: float = 120) -> Iterator[None]:
    """HTTP front ends for `cluster` on one event loop in a background thread."""
    servers = _servers(cluster, listeners, None)

    async def serve_all() -> None:
        await asyncio.gather(*(server.serve() for server in servers))

    thread = threading.Thread(target=lambda: asyncio.run(serve_all()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not all(server.started for server in servers):
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.05)
        yield
    finally:
        for server in servers:
            server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def running_server(options: ServeOptions, extra: Sequence[Listener] = ()) -> Iterator[Any]:
    """The cluster plus its HTTP server(s) in this process (tests, benches); yields the cluster."""
    from starserve.cluster.launch import launch_cluster

    cluster = launch_cluster(options.cluster, options.ray_address)
    try:
        listeners = [Listener(options.settings(), options.host, options.port), *extra]
        with serving(cluster, listeners):
            yield cluster
    finally:
        cluster.shutdown()
