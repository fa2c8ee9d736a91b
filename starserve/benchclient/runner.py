"""Open-loop benchmark: send requests at their arrival times, stream, summarize like vLLM."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp

from starserve.benchclient.client import RequestResult, stream_request
from starserve.metrics import summarize
from starserve.workload import WorkloadRequest

DEFAULT_MAX_TOKENS = 256  # when a prompt set gives no output length


@dataclass(frozen=True, slots=True)
class BenchOptions:
    base_url: str
    endpoint: str = "/v1/completions"
    model: str | None = None  # None: the first model /v1/models lists
    api_key: str | None = None
    max_tokens: int | None = None  # None: each request's num_output_tokens, else 256
    ignore_eos: bool = False
    temperature: float = 0.0
    goodput_slos_ms: dict[str, float] | None = None
    request_rate: float = float("inf")
    burstiness: float = 1.0
    show_progress: bool = True
    extra_body: dict[str, Any] = field(default_factory=dict)


def _payload(options: BenchOptions, model: str, request: WorkloadRequest) -> dict[str, Any]:
    max_tokens = options.max_tokens or request.num_output_tokens or DEFAULT_MAX_TOKENS
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": options.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": options.ignore_eos,
        **options.extra_body,
    }
    if options.endpoint.endswith("/chat/completions"):
        body["messages"] = [{"role": "user", "content": request.prompt}]
    else:
        body["prompt"] = request.prompt
    return body


async def _served_model(session: aiohttp.ClientSession, options: BenchOptions) -> str:
    async with session.get(f"{options.base_url}/v1/models", headers=_headers(options)) as response:
        if response.status != 200:
            raise RuntimeError(f"GET /v1/models: HTTP {response.status}")
        return str((await response.json())["data"][0]["id"])


def _headers(options: BenchOptions) -> dict[str, str]:
    return {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}


async def run_benchmark(
    options: BenchOptions, requests: Sequence[WorkloadRequest]
) -> dict[str, Any]:
    """Send every request at its `arrival_time_s` (open loop) and return vLLM's result dict."""
    from tqdm import tqdm

    timeout = aiohttp.ClientTimeout(total=6 * 3600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        model = options.model or await _served_model(session, options)
        url = options.base_url.rstrip("/") + options.endpoint
        bar = tqdm(total=len(requests), desc="requests", disable=not options.show_progress)
        start = time.perf_counter()

        async def one(request: WorkloadRequest) -> RequestResult:
            await asyncio.sleep(max(0.0, start + request.arrival_time_s - time.perf_counter()))
            result = await stream_request(
                session, url, _payload(options, model, request), _headers(options)
            )
            bar.update(1)
            return result

        results = await asyncio.gather(*(one(r) for r in requests))
        duration_s = time.perf_counter() - start
        bar.close()
    return _result_dict(options, model, requests, list(results), duration_s)


def _result_dict(
    options: BenchOptions,
    model: str,
    requests: Sequence[WorkloadRequest],
    results: list[RequestResult],
    duration_s: float,
) -> dict[str, Any]:
    records = [r.record() for r in results]
    summary = summarize(records, duration_s=duration_s, goodput_slos_ms=options.goodput_slos_ms)
    ok = [r for r in records if r.success]
    return {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "backend": "openai-chat" if "chat" in options.endpoint else "openai",
        "model_id": model,
        "num_prompts": len(requests),
        "request_rate": options.request_rate,
        "burstiness": options.burstiness,
        "max_concurrency": None,
        **summary,
        "input_lens": [r.num_prompt_tokens for r in records],
        "output_lens": [r.num_output_tokens if r.success else 0 for r in records],
        "ttfts": [r.ttft_s if r.success else 0.0 for r in records],
        "itls": [r.itls_s if r.success else [] for r in records],
        "generated_texts": [r.generated_text for r in results],
        "errors": [r.error for r in results],
        "failed": len(records) - len(ok),
    }
