"""Start the cluster and the HTTP server around it (the `starserve serve` command and tests)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starserve.cluster.config import ClusterConfig
from starserve.server.app import ServerSettings, build_app

log = logging.getLogger(__name__)


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


def _uvicorn_server(options: ServeOptions, cluster: Any) -> Any:
    import uvicorn

    from starserve.server.backend import ClusterBackend

    backend = ClusterBackend(cluster)
    settings = ServerSettings(
        model_name=options.model_name or default_model_name(options.cluster.model),
        api_key=options.api_key,
        max_num_requests=options.max_num_requests,
    )
    app = build_app(backend, settings)
    app.router.on_startup.append(backend.start)
    app.router.on_shutdown.append(backend.stop)
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="warning")
    return uvicorn.Server(config)


def serve_forever(options: ServeOptions, announce: Any = print) -> None:
    """Launch the cluster, serve until interrupted, then stop everything."""
    from starserve.cluster.launch import launch_cluster

    cluster = launch_cluster(options.cluster, options.ray_address)
    try:
        server = _uvicorn_server(options, cluster)
        for line in cluster.describe():
            announce(f"  {line}")
        announce(
            f"starserve listening on http://{options.host}:{options.port} "
            f"(policy {options.cluster.policy}, OpenAI API at /v1)"
        )
        server.run()
    finally:
        cluster.shutdown()


@contextlib.contextmanager
def running_server(options: ServeOptions, timeout_s: float = 300) -> Iterator[Any]:
    """A server in a background thread (tests, benches); yields the cluster."""
    from starserve.cluster.launch import launch_cluster

    cluster = launch_cluster(options.cluster, options.ray_address)
    server = _uvicorn_server(options, cluster)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.05)
        yield cluster
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        cluster.shutdown()
