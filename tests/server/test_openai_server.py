"""A real cluster (Ray, real engine) behind the HTTP server, driven by the `openai` client.

One cluster and one set of HTTP front ends serve the whole module: the main one, and one with
an API key and an admission limit of one request (both share the cluster).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from starserve.cluster.config import ClusterConfig
from starserve.cluster.types import MigrationStatus
from starserve.server.app import ServerSettings
from starserve.server.run import Listener, ServeOptions, running_server

MODEL = "SmolLM2-135M-Instruct"
KEY = "test-key"
CHAT = [{"role": "user", "content": "Name three colours of the rainbow."}]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, Any]]:
    import ray

    port, guarded_port = free_port(), free_port()
    cluster_config = ClusterConfig(
        num_prefill=1, num_decode=2, policy="round_robin", engine={"num_kv_blocks": 64}
    )
    guarded = Listener(
        ServerSettings(MODEL, api_key=KEY, max_num_requests=1), "127.0.0.1", guarded_port
    )
    with running_server(ServeOptions(cluster=cluster_config, port=port), [guarded]) as cluster:
        ray.get(cluster.controller.set_auto_migrate.remote(False))  # only forced migrations here
        yield {
            "cluster": cluster,
            "url": f"http://127.0.0.1:{port}",
            "client": openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0
            ),
            "guarded_url": f"http://127.0.0.1:{guarded_port}/v1",
        }


def test_chat_and_completion_streaming_match_non_streaming(server: dict[str, Any]) -> None:
    client: openai.OpenAI = server["client"]
    chat = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=16, temperature=0)
    assert chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.prompt_tokens > 5
    assert 1 <= chat.usage.completion_tokens <= 16
    stream = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=16, temperature=0, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == chat.choices[0].message.content

    done = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=12, temperature=0
    )
    assert (
        done.usage is not None
        and done.usage.completion_tokens == 12
        or done.choices[0].finish_reason == "stop"
    )
    stream = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == done.choices[0].text
    assert (
        chunks[-1].usage is not None
        and chunks[-1].usage.completion_tokens == done.usage.completion_tokens
    )


def test_models_health_and_metrics(server: dict[str, Any]) -> None:
    assert [m.id for m in server["client"].models.list()] == [MODEL]
    assert httpx.get(f"{server['url']}/health").json() == {"status": "ok"}
    metrics = httpx.get(f"{server['url']}/metrics").text
    assert 'starserve_instance_kv_blocks_total{instance="1",role="decode"} 64.0' in metrics
    assert "starserve_time_to_first_token_seconds_count" in metrics


BAD_BODIES = [
    (b'{"model": "SmolLM2', "not valid JSON"),
    (b'{"model": "gpt-9", "prompt": "hi"}', "does not exist"),
    (b'{"model": "SmolLM2-135M-Instruct", "prompt": "hi", "temperature": -1}', "temperature"),
    (b'{"model": "SmolLM2-135M-Instruct", "prompt": "hi", "top_p": 0}', "top_p"),
    (b'{"model": "SmolLM2-135M-Instruct", "prompt": "hi", "max_tokens": 0}', "max_tokens"),
    (b'{"model": "SmolLM2-135M-Instruct", "prompt": "' + b"word " * 3000 + b'"}', "context length"),
    (b'{"model": "SmolLM2-135M-Instruct"}', "prompt"),
]


@pytest.mark.parametrize(("body", "message"), BAD_BODIES)
def test_bad_request_gets_400_and_server_keeps_serving(
    server: dict[str, Any], body: bytes, message: str
) -> None:
    response = httpx.post(
        f"{server['url']}/v1/completions",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"
    good = server["client"].completions.create(model=MODEL, prompt="Hello", max_tokens=2)
    assert good.usage is not None and good.usage.completion_tokens >= 1


def test_api_key_and_admission_limit(server: dict[str, Any]) -> None:
    wrong = openai.OpenAI(base_url=server["guarded_url"], api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert httpx.post(f"{server['guarded_url']}/completions", json={}).status_code == 401
    client = openai.OpenAI(base_url=server["guarded_url"], api_key=KEY, max_retries=0)
    stream = client.completions.create(model=MODEL, prompt="Count:", max_tokens=64, stream=True, extra_body={"ignore_eos": True})  # fmt: skip
    next(iter(stream))  # in flight: the limit is one
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    stream.close()
    deadline = time.monotonic() + 10
    while True:  # the aborted request frees its slot
        try:
            assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=2).choices
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "admission slot never freed"
            time.sleep(0.1)


def stream_with_migration(
    server: dict[str, Any], fault: str | None, kill_destination: bool = False
) -> tuple[str, Any]:
    """Stream a greedy completion; after 8 tokens force a migration (from another thread)."""
    import ray

    cluster = server["cluster"]
    client: openai.OpenAI = server["client"]
    stream = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=48, temperature=0, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    texts, records = [], []
    for index, chunk in enumerate(stream):
        texts.append(chunk.choices[0].text)
        if index == 8:

            def migrate(request_id: str = chunk.id) -> None:
                src = ray.get(cluster.controller.locate.remote(request_id))
                dst = next(h for h in cluster.decode if h.instance_id != src)
                if kill_destination:
                    ray.kill(dst.actor, no_restart=True)
                    with pytest.raises(ray.exceptions.RayActorError):
                        ray.get(dst.actor.ready.remote(), timeout=10)
                else:
                    ray.get(dst.actor.set_fault.remote(fault))
                record = ray.get(cluster.controller.migrate.remote(request_id, dst.instance_id))
                records.append(record)
                if not kill_destination:
                    ray.get(dst.actor.set_fault.remote(None))

            thread = threading.Thread(target=migrate)
            thread.start()
    thread.join()
    return "".join(texts), records[0]


def test_forced_migration_keeps_the_greedy_text_and_leaks_nothing(server: dict[str, Any]) -> None:
    import ray

    reference = server["client"].completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=48, temperature=0, extra_body={"ignore_eos": True}
    ).choices[0].text  # fmt: skip
    text, record = stream_with_migration(server, fault=None)
    assert record.status is MigrationStatus.FINISHED, record.reason
    assert text == reference
    metrics = httpx.get(f"{server['url']}/metrics").text
    assert 'starserve_migrations_ended_total{status="finished"} 1.0' in metrics
    assert "starserve_migration_pause_seconds_count 1.0" in metrics

    text, record = stream_with_migration(server, fault="commit")
    assert record.status is MigrationStatus.ABORTED_DST
    assert text == reference
    time.sleep(0.2)
    for handle in server["cluster"].instances:
        stats = ray.get(handle.actor.stats.remote())
        assert stats.num_free_blocks == stats.num_total_blocks, (
            f"instance {handle.instance_id} leaks"
        )


def test_dead_destination_aborts_and_the_request_finishes_on_the_source(
    server: dict[str, Any],
) -> None:
    """Last in this module: it kills a decode instance."""
    reference = server["client"].completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=48, temperature=0, extra_body={"ignore_eos": True}
    ).choices[0].text  # fmt: skip
    text, record = stream_with_migration(server, fault=None, kill_destination=True)
    assert record.status is MigrationStatus.ABORTED_DST
    assert "destination failed" in record.reason
    assert text == reference
    after = server["client"].completions.create(model=MODEL, prompt="Hello", max_tokens=4)
    assert after.usage is not None and after.usage.completion_tokens >= 1
