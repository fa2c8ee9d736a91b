"""Faults on a real cluster (Ray, real engines, real HTTP, the `openai` client): a killed
decode instance loses no token, a killed prefill instance's requests are prefilled again,
aborts free every KV block, the API survives schema fuzzing and overload.

One cluster (2 prefill + 2 decode, float32) serves the module; tests that kill instances run
last and wait for the restarted instance to rejoin.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from starserve.cluster.config import ClusterConfig
from starserve.server.app import ServerSettings
from starserve.server.run import Listener, ServeOptions, running_server
from tests.server.test_openai_server import MODEL, free_port

PROMPTS = ["Once upon a time", "The three primary colours are", "def fibonacci(n):", "In 1905,"]
MAX_TOKENS = 40
SOAK_LIMIT = 3  # admission limit of the soak listener


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, Any]]:
    import ray

    port, soak_port = free_port(), free_port()
    config = ClusterConfig(
        num_prefill=2,
        num_decode=2,
        policy="round_robin",
        dtype="float32",
        engine={"num_kv_blocks": 64},
    )
    soak = Listener(ServerSettings(MODEL, max_num_requests=SOAK_LIMIT), "127.0.0.1", soak_port)
    with running_server(ServeOptions(cluster=config, port=port), [soak]) as cluster:
        ray.get(cluster.controller.set_auto_migrate.remote(False))
        yield {
            "cluster": cluster,
            "url": f"http://127.0.0.1:{port}",
            "soak_url": f"http://127.0.0.1:{soak_port}",
            "client": openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0
            ),
        }


def wait_all_free(cluster: Any, timeout_s: float = 20, skip: int | None = None) -> None:
    """Every instance (but `skip`) up and no KV block in use (aborted or finished requests
    freed theirs)."""
    import ray

    deadline = time.monotonic() + timeout_s
    handles = [h for h in cluster.instances if h.instance_id != skip]
    while True:
        try:
            stats = ray.get([h.actor.stats.remote() for h in handles], timeout=5)
            used = {
                h.instance_id: s.num_total_blocks - s.num_free_blocks
                for h, s in zip(handles, stats, strict=True)
            }
        except Exception as err:  # an instance still restarting
            used = {-1: repr(err)}
        if not any(used.values()):
            return
        assert time.monotonic() < deadline, f"KV blocks still in use: {used}"
        time.sleep(0.2)


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        named = line.startswith(f"{name}{{") or line.startswith(f"{name} ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{selector}}} not in /metrics")


def wait_up(url: str, instance_id: int, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while metric(url, "starserve_instance_up", instance=str(instance_id)) != 1.0:
        assert time.monotonic() < deadline, f"instance {instance_id} did not rejoin"
        time.sleep(0.5)


def stream_text(
    client: openai.OpenAI, prompt: str, seed: int | None, on_token: Any = None
) -> tuple[str, int, str | None]:
    """(text, number of token events, finish reason) of one streamed completion."""
    temperature = 0.0 if seed is None else 0.8
    stream = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=MAX_TOKENS, temperature=temperature, seed=seed,
        stream=True, extra_body={"ignore_eos": True},
    )  # fmt: skip
    text, events, reason = "", 0, None
    for chunk in stream:
        choice = chunk.choices[0]
        text += choice.text
        events += 1
        reason = choice.finish_reason or reason
        if on_token is not None:
            on_token(events)
    return text, events, reason


def kill(cluster: Any, handle: Any) -> None:
    import ray

    os.kill(ray.get(handle.actor.pid.remote()), signal.SIGKILL)


# --- schema fuzzing: hypothesis against the live app, checked against /openapi.json ---------
JUNK = st.recursive(
    st.none() | st.booleans() | st.text(max_size=6)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
    max_leaves=4,
)  # fmt: skip
NOT_NULL_JUNK = JUNK.filter(lambda v: v is not None)
SMALL = st.integers(-2, 3)  # token budgets stay tiny: fuzzing must not wait for generation
SAMPLING = {  # valid values of the optional fields
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0.05, 1),
    "top_k": st.integers(-1, 50),
    "seed": st.integers(0, 2**32),
    "stop": st.lists(st.text(min_size=1, max_size=3), max_size=2),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "ignore_eos": st.booleans(),
    "n": st.just(1),
    "logprobs": JUNK,  # ignored, as vLLM does
}
BROKEN = {  # what a mutated field may become
    "temperature": st.floats(-1, 3) | JUNK,
    "top_p": st.floats(-0.5, 1.5) | JUNK,
    "top_k": st.integers(-3, 2**40) | JUNK,
    "seed": st.integers(-(2**70), 2**70) | JUNK,
    "stop": st.just("") | st.lists(st.just(""), min_size=1, max_size=1) | JUNK,
    "n": st.integers(0, 3) | JUNK,
    "stream": JUNK,
    "stream_options": JUNK,
    "max_tokens": st.integers(-3, 0) | st.integers(10**6, 10**30) | NOT_NULL_JUNK,
    "max_completion_tokens": st.integers(-3, 0) | NOT_NULL_JUNK,
    "model": JUNK,
    "prompt": st.lists(st.integers(-5, 10**6), min_size=1, max_size=4) | JUNK,
    "messages": st.lists(st.fixed_dictionaries({"role": JUNK}), max_size=2) | JUNK,
}
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=30)}
)
COMPLETION = st.fixed_dictionaries(
    {"model": st.just(MODEL), "max_tokens": SMALL.filter(lambda v: v > 0),
     "prompt": st.text(min_size=1, max_size=30) | st.lists(st.integers(1, 5000), min_size=1, max_size=6)},
    optional=SAMPLING,
)  # fmt: skip
CHAT = st.fixed_dictionaries(
    {"model": st.just(MODEL), "max_tokens": SMALL.filter(lambda v: v > 0),
     "messages": st.lists(MESSAGE, min_size=1, max_size=3)},
    optional=SAMPLING,
)  # fmt: skip


def mutate(data: st.DataObject, body: dict[str, Any]) -> dict[str, Any]:
    """Half the bodies stay valid; the rest get one field broken or dropped."""
    choice = data.draw(st.sampled_from(["keep", "keep", "break", "drop"]))
    if choice == "drop":
        body.pop(data.draw(st.sampled_from(sorted(body))))
    elif choice == "break":
        name = data.draw(st.sampled_from(sorted(set(BROKEN) & {*body, *SAMPLING})))
        body[name] = data.draw(BROKEN.get(name, JUNK))
    return body


METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "TRACE", "OPTIONS")


def check_against_spec(spec: dict[str, Any], path: str, method: str, response: Any) -> None:
    """Zero 5xx and zero mismatches with the published document."""
    status = response.status_code
    assert status < 500, f"{method} {path}: {status} {response.text[:300]}"
    operations = spec["paths"][path]
    if method.lower() not in operations and not (method == "HEAD" and "get" in operations):
        assert status == 405, f"{method} {path}: undeclared method answered {status}"
        allowed = {m.strip() for m in response.headers["allow"].split(",")}
        assert {m.upper() for m in operations} <= allowed
        return
    declared = operations[method.lower()]["responses"]
    assert str(status) in declared, f"{method} {path}: {status} is not declared"
    kind = response.headers["content-type"].split(";")[0]
    assert kind in declared[str(status)].get("content", {"application/json": {}}), (method, path)
    if status != 200:
        error = response.json()["error"]
        assert error["code"] == status and isinstance(error["message"], str)
        assert isinstance(error["type"], str) and "param" in error
    elif kind == "text/event-stream":
        events = [line for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and '"error"' not in response.text


def test_schema_fuzzing_finds_no_5xx_and_no_spec_mismatch(server: dict[str, Any]) -> None:
    url = server["url"]
    spec = httpx.get(f"{url}/openapi.json").json()
    http = httpx.Client(base_url=url, timeout=60)
    generated: list[int] = []  # statuses of generation requests (the fuzz must reach the engine)

    @settings(max_examples=80, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(sorted(spec["paths"])))
        method = data.draw(st.sampled_from(METHODS) if data.draw(st.booleans()) else st.just(
            next(iter(spec["paths"][path])).upper()))  # fmt: skip
        body = None
        if path == "/v1/completions":
            body = mutate(data, data.draw(COMPLETION))
        elif path == "/v1/chat/completions":
            body = mutate(data, data.draw(CHAT))
        raw = data.draw(st.sampled_from(["json", "json", "json", "garbage"]))
        if raw == "garbage" and body is not None:
            response = http.request(method, path, content=b"{not json",
                                    headers={"content-type": "application/json"})  # fmt: skip
        else:
            response = http.request(method, path, json=body)
        check_against_spec(spec, path, method, response)
        if body is not None and method == "POST":
            generated.append(response.status_code)

    try:
        fuzz()
    finally:
        http.close()
    assert generated.count(200) >= 3 and generated.count(400) >= 3, generated
    wait_all_free(server["cluster"], timeout_s=10)


def test_client_disconnect_mid_stream_frees_every_kv_block(server: dict[str, Any]) -> None:
    body = {"model": MODEL, "prompt": PROMPTS[2], "max_tokens": 300, "stream": True,
            "ignore_eos": True}  # fmt: skip
    for _ in range(3):
        url = f"{server['url']}/v1/completions"
        with httpx.stream("POST", url, json=body, timeout=60) as response:
            lines = response.iter_lines()
            tokens = [line for line in (next(lines) for _ in range(12)) if line.startswith("data")]
            assert len(tokens) == 6
    wait_all_free(server["cluster"], timeout_s=10)


def test_overload_soak_answers_only_200_or_429_and_leaks_nothing(server: dict[str, Any]) -> None:
    """Eight times the soak listener's admission limit, for a fixed four seconds."""
    url, stop_at = server["soak_url"], time.monotonic() + 4.0
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 4, "ignore_eos": True}

    def hammer() -> list[int]:
        codes = []
        with httpx.Client(timeout=60) as http:
            while time.monotonic() < stop_at:
                codes.append(http.post(f"{url}/v1/completions", json=body).status_code)
        return codes

    with ThreadPoolExecutor(8 * SOAK_LIMIT) as pool:
        codes = [c for batch in pool.map(lambda _: hammer(), range(8 * SOAK_LIMIT)) for c in batch]
    assert set(codes) <= {200, 429}, sorted(set(codes))
    assert codes.count(200) >= 1 and codes.count(429) >= 1
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    wait_all_free(server["cluster"], timeout_s=10)


def test_openapi_declares_what_the_server_answers(server: dict[str, Any]) -> None:
    spec = httpx.get(f"{server['url']}/openapi.json").json()
    for path in ("/v1/completions", "/v1/chat/completions"):
        responses = spec["paths"][path]["post"]["responses"]
        assert set(responses) == {"200", "400", "401", "404", "429", "500", "503"}
        for code in ("400", "401", "404", "429", "500", "503"):
            ref = responses[code]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorResponse")
        assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}
    assert "422" not in str(spec) and "HTTPValidationError" not in str(spec)
    assert set(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    trace = httpx.request("TRACE", f"{server['url']}/v1/completions")
    assert trace.status_code == 405 and trace.headers["allow"] == "POST"
    assert trace.json()["error"]["code"] == 405
    got = httpx.delete(f"{server['url']}/metrics")
    assert got.status_code == 405 and re.fullmatch(r"GET(, HEAD)?", got.headers["allow"])


CASES = [(p, None) for p in PROMPTS] + [(PROMPTS[0], 3)]  # greedy ones and one seeded


def test_killed_decode_instance_loses_and_repeats_no_token(server: dict[str, Any]) -> None:
    """Six streams, one decode instance SIGKILLed mid-stream: every stream ends with the
    exact text of an undisturbed run; an abandoned stream frees its KV; the instance comes
    back and /metrics shows the failure."""
    cluster, client = server["cluster"], server["client"]
    with ThreadPoolExecutor(len(CASES)) as pool:
        reference = list(pool.map(lambda c: stream_text(client, *c), CASES))
    assert all(events == MAX_TOKENS for _, events, _ in reference)

    started = threading.Barrier(len(CASES) + 2)  # the streams, the abandoned one, the killer

    def on_token(events: int) -> None:
        if events == 5:
            started.wait(timeout=60)

    def abandoned() -> None:
        with httpx.stream("POST", f"{server['url']}/v1/completions", json={
            "model": MODEL, "prompt": PROMPTS[1], "max_tokens": 200, "stream": True,
            "ignore_eos": True, "temperature": 0,
        }, timeout=60) as response:  # fmt: skip
            lines = response.iter_lines()
            for _ in range(10):  # 5 events and their blank separators
                next(lines)
            started.wait(timeout=60)
            time.sleep(0.05)  # the kill lands; the client leaves during the failover

    victim = cluster.decode[1]
    with ThreadPoolExecutor(len(CASES) + 1) as pool:
        futures = [pool.submit(stream_text, client, *case, on_token) for case in CASES]
        gone = pool.submit(abandoned)
        started.wait(timeout=60)
        kill(cluster, victim)
        results = [f.result(timeout=120) for f in futures]
        gone.result(timeout=60)
    assert results == reference
    url = server["url"]
    assert metric(url, "starserve_instance_failures_total", instance=str(victim.instance_id)) == 1
    wait_up(url, victim.instance_id)
    wait_all_free(cluster)
    assert stream_text(client, *CASES[0]) == reference[0]  # the restarted instance serves


def test_killed_prefill_instance_prefills_its_requests_again(server: dict[str, Any]) -> None:
    import ray

    cluster, client = server["cluster"], server["client"]
    long_prompts = [f"{p} " + "and then, " * 120 for p in PROMPTS]
    cases = [(p, None) for p in long_prompts]
    with ThreadPoolExecutor(len(cases)) as pool:
        reference = list(pool.map(lambda c: stream_text(client, *c), cases))
    victim = cluster.prefill[0]
    with ThreadPoolExecutor(len(cases)) as pool:
        futures = [pool.submit(stream_text, client, *case) for case in cases]
        deadline = time.monotonic() + 30
        while True:  # kill it while it holds a request in prefill
            if ray.get(victim.actor.num_pending_prefills.remote()) > 0:
                break
            assert time.monotonic() < deadline, "no request reached prefill instance 0"
            time.sleep(0.005)
        kill(cluster, victim)
        results = [f.result(timeout=120) for f in futures]
    assert results == reference
    url = server["url"]
    assert metric(url, "starserve_instance_failures_total", instance=str(victim.instance_id)) == 1
    wait_all_free(cluster, skip=victim.instance_id)  # restarts are the decode test's part
