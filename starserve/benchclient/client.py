"""One streaming request against an OpenAI-compatible server, timed like vLLM's client."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from starserve.metrics import RequestRecord


@dataclass(slots=True)
class RequestResult:
    """What the client saw for one request (vLLM's RequestFuncOutput, in our types)."""

    success: bool = False
    send_time_s: float = 0.0
    event_times_s: list[float] = field(default_factory=list)  # one per streamed event with tokens
    num_prompt_tokens: int = 0
    num_output_tokens: int | None = None  # from `usage` when the server sends it
    generated_text: str = ""
    error: str = ""

    def record(self) -> RequestRecord:
        """The record `starserve.metrics.summarize` reads (tokens of one event share its time)."""
        times = list(self.event_times_s)
        if self.success and self.num_output_tokens is not None and times:
            times += [times[-1]] * max(0, self.num_output_tokens - len(times))
        return RequestRecord(
            send_time_s=self.send_time_s,
            token_times_s=tuple(times),
            num_prompt_tokens=self.num_prompt_tokens,
            success=self.success and bool(times),
        )


def _choice_text(choice: dict[str, Any]) -> str | None:
    if "delta" in choice:
        return choice["delta"].get("content")
    return choice.get("text")


async def stream_request(
    session: aiohttp.ClientSession, url: str, payload: dict[str, Any], headers: dict[str, str]
) -> RequestResult:
    """POST with stream=True and time every SSE event that carries output."""
    result = RequestResult(send_time_s=time.perf_counter())
    try:
        async with session.post(url, json=payload, headers=headers) as response:
            if response.status != 200:
                result.error = f"HTTP {response.status}: {(await response.text())[:300]}"
                return result
            async for raw in response.content:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    break
                _absorb(result, json.loads(data), time.perf_counter())
        result.success = not result.error and bool(result.event_times_s)
        if not result.success and not result.error:
            result.error = "no output tokens"
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as err:
        result.error = f"{type(err).__name__}: {err}"
    return result


def _absorb(result: RequestResult, event: dict[str, Any], now_s: float) -> None:
    if "error" in event:
        result.error = str(event["error"].get("message", event["error"]))
        return
    usage = event.get("usage")
    if usage:
        result.num_prompt_tokens = int(usage.get("prompt_tokens", 0))
        result.num_output_tokens = int(usage.get("completion_tokens", 0))
    for choice in event.get("choices") or []:
        text = _choice_text(choice)
        if text is None:
            continue
        if "delta" in choice and choice["delta"].get("role") and not text:
            continue  # the chat role announcement carries no token
        result.event_times_s.append(now_s)
        result.generated_text += text
