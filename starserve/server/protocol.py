"""OpenAI request bodies, their validation, and the JSON shapes the API returns."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ApiError(Exception):
    """An error answered in OpenAI's JSON error shape."""

    def __init__(self, status_code: int, message: str, *, param: str | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        return error_body(self.status_code, self.message, self.param)


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "method_not_allowed",
    429: "rate_limit_exceeded",
    500: "internal_server_error",
    503: "service_unavailable",
}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: int


class ErrorResponse(BaseModel):
    """OpenAI's error shape: every non-200 answer of the API."""

    error: ErrorDetail


ERROR_MEANINGS = {
    400: "invalid request (malformed JSON, unknown model, bad field values, prompt too long)",
    401: "missing or wrong API key (only when the server has one)",
    404: "no such path",
    429: "admission limit reached: too many requests in flight",
    500: "the request failed inside the cluster",
    503: "no instance of a needed role is up, or the request missed its deadline",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses (all in the error schema)."""
    return {code: {"model": ErrorResponse, "description": ERROR_MEANINGS[code]} for code in codes}


def error_body(status_code: int, message: str, param: str | None = None) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status_code, "api_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status_code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    # unknown OpenAI fields (logprobs, user, ...) are accepted and ignored, as vLLM does
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int]
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


def usage(num_prompt_tokens: int, num_completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": num_prompt_tokens,
        "completion_tokens": num_completion_tokens,
        "total_tokens": num_prompt_tokens + num_completion_tokens,
    }


def completion_body(
    request_id: str, model: str, text: str, finish_reason: str | None, use: dict[str, int] | None
) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return _envelope(request_id, "text_completion", model, choice, use)


def chat_body(
    request_id: str, model: str, text: str, finish_reason: str | None, use: dict[str, int] | None
) -> dict[str, Any]:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "logprobs": None,
        "finish_reason": finish_reason,
    }
    return _envelope(request_id, "chat.completion", model, choice, use)


def chat_chunk_body(
    request_id: str, model: str, delta: dict[str, str], finish_reason: str | None
) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return _envelope(request_id, "chat.completion.chunk", model, choice, None)


def usage_chunk_body(request_id: str, model: str, obj: str, use: dict[str, int]) -> dict[str, Any]:
    body = _envelope(request_id, obj, model, None, use)
    body["choices"] = []
    return body


def _envelope(
    request_id: str, obj: str, model: str, choice: dict[str, Any] | None, use: dict[str, int] | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": request_id,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [choice] if choice is not None else [],
    }
    if use is not None:
        body["usage"] = use
    return body
