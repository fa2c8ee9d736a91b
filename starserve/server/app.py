"""The OpenAI-compatible HTTP API (FastAPI)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from starserve.server.backend import ClusterBackend
from starserve.server.metrics import ServerMetrics
from starserve.server.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    chat_body,
    chat_chunk_body,
    completion_body,
    error_body,
    error_responses,
    usage,
    usage_chunk_body,
)
from starserve.server.streams import Piece, RequestFailed
from starserve.server.validate import (
    chat_messages,
    check_model,
    check_token_ids,
    completion_prompt,
    sampling_params,
)

OPEN_PATHS = ("/health", "/metrics")  # answered without an API key
GENERATION_ERRORS = error_responses(400, 401, 404, 429, 500, 503)
GENERATION_200: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the completion (JSON), or with `stream` its chunks as server-sent events",
        "content": {"application/json": {}, "text/event-stream": {"schema": {"type": "string"}}},
    }
}


@dataclass(frozen=True, slots=True)
class ServerSettings:
    model_name: str
    api_key: str | None = None
    max_num_requests: int = 256  # admission limit: more in flight -> 429
    # Every request ends by a deadline derived from its budget (base + per output token), and
    # a stream with no token for `stall_timeout_s` ends with an error event, never silence.
    request_timeout_base_s: float = 60.0
    request_timeout_per_token_s: float = 1.0
    stall_timeout_s: float = 60.0

    def deadline_s(self, max_tokens: int) -> float:
        """Monotonic deadline of a request admitted now that may generate `max_tokens`."""
        budget_s = self.request_timeout_base_s + self.request_timeout_per_token_s * max_tokens
        return time.monotonic() + budget_s


@dataclass(slots=True)
class _Tally:
    num_prompt: int
    num_generated: int = 0
    finish_reason: str | None = None


@dataclass(slots=True)
class _Generation:
    """One admitted request on its way through the cluster."""

    request_id: str
    model: str
    prompt: list[int]
    params: Any
    stream: bool
    include_usage: bool
    is_chat: bool
    deadline_s: float  # monotonic


def build_app(backend: ClusterBackend, settings: ServerSettings) -> FastAPI:
    app = FastAPI(title="starserve", docs_url=None, redoc_url=None)
    metrics = ServerMetrics()
    state = {"num_active": 0, "num_pauses_seen": 0}

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        metrics.requests.labels(str(err.status_code)).inc()
        return JSONResponse(err.body(), status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def _bad_body(_: Request, err: RequestValidationError) -> JSONResponse:
        metrics.requests.labels("400").inc()
        return JSONResponse(error_body(400, _describe(err)), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        # keeps Starlette's headers: a 405 says which methods the path takes (`Allow`)
        body = error_body(err.status_code, str(err.detail))
        return JSONResponse(body, status_code=err.status_code, headers=err.headers)

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Response:
        if (
            settings.api_key
            and request.url.path not in OPEN_PATHS
            and request.headers.get("authorization") != f"Bearer {settings.api_key}"
        ):
            metrics.requests.labels("401").inc()
            body = error_body(401, "missing or invalid API key (send Authorization: Bearer KEY)")
            return JSONResponse(body, status_code=401)
        response: Response = await call_next(request)
        return response

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", responses=error_responses(401))
    async def models() -> dict[str, Any]:
        card = {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "starserve"}
        return {"object": "list", "data": [card]}

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"description": "Prometheus text exposition format"}},
    )
    async def prometheus() -> Response:
        latest = await backend.metrics()
        for pause in backend.pauses[state["num_pauses_seen"] :]:
            metrics.migration_pause.observe(pause.pause_ms / 1000)
        state["num_pauses_seen"] = len(backend.pauses)
        return Response(metrics.render(latest), media_type="text/plain; version=0.0.4")

    @app.get("/v1/cluster/stats", responses=error_responses(401))
    async def cluster_stats() -> dict[str, Any]:
        """starserve extension: preemptions per instance and every migrated request's pause."""
        latest = await backend.metrics()
        return {
            "migrations_started": latest.num_migrations_started,
            "migrations_by_status": latest.num_migrations_by_status,
            "preemptions_per_instance": {
                str(p.snapshot.instance_id): p.num_preemptions_total for p in latest.polls
            },
            "migration_pauses": [asdict(pause) for pause in backend.pauses],
        }

    @app.post("/v1/completions", responses={**GENERATION_200, **GENERATION_ERRORS})
    async def completions(body: CompletionRequest) -> Response:
        check_model(body.model, settings.model_name)
        prompt = completion_prompt(body)
        ids = prompt if isinstance(prompt, list) else await _encode(prompt, None)
        check_token_ids(ids, backend.vocab_size)
        return await _run(body, ids, is_chat=False)

    @app.post("/v1/chat/completions", responses={**GENERATION_200, **GENERATION_ERRORS})
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        check_model(body.model, settings.model_name)
        ids = await _encode(None, chat_messages(body))
        return await _run(body, ids, is_chat=True)

    async def _encode(prompt: str | None, messages: list[dict[str, str]] | None) -> list[int]:
        try:
            return await backend.encode(prompt, messages)
        except RequestFailed as err:
            raise ApiError(err.status_code, str(err)) from None
        except Exception as err:  # the tokenizer or chat template rejected the input
            message = str(getattr(err, "cause", err)).strip().splitlines()[-1]
            raise ApiError(400, f"the prompt cannot be tokenized: {message}") from None

    async def _run(
        body: CompletionRequest | ChatCompletionRequest, ids: list[int], is_chat: bool
    ) -> Response:
        params = sampling_params(body, len(ids), backend.max_model_len)
        if state["num_active"] >= settings.max_num_requests:
            raise ApiError(429, f"server busy: {settings.max_num_requests} requests in flight")
        prefix = "chatcmpl" if is_chat else "cmpl"
        gen = _Generation(
            request_id=f"{prefix}-{uuid.uuid4().hex}",
            model=settings.model_name,
            prompt=ids,
            params=params,
            stream=body.stream,
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
            is_chat=is_chat,
            deadline_s=settings.deadline_s(params.max_tokens),
        )
        state["num_active"] += 1  # admitted: released when the response ends, however it ends
        if gen.stream:
            return StreamingResponse(_released(_sse(gen)), media_type="text/event-stream")
        try:
            return JSONResponse(await _complete(gen))
        finally:
            state["num_active"] -= 1

    async def _released(events: AsyncIterator[str]) -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event
        finally:
            state["num_active"] -= 1

    async def _tracked(gen: _Generation, tally: _Tally) -> AsyncIterator[Piece]:
        """The request's pieces in order, counted into `tally` and the latency histograms."""
        arrival_s, times = time.time(), list[float]()
        try:
            pieces = backend.generate(
                gen.request_id, gen.prompt, gen.params, gen.deadline_s, settings.stall_timeout_s
            )
            async for piece in pieces:
                times.extend(time.time() for _ in piece.token_ids)
                tally.num_generated += len(piece.token_ids)
                tally.num_prompt = piece.num_prompt_tokens or tally.num_prompt
                tally.finish_reason = piece.finish_reason
                yield piece
        finally:
            metrics.observe_request(times, arrival_s)

    async def _complete(gen: _Generation) -> dict[str, Any]:
        tally = _Tally(num_prompt=len(gen.prompt))
        try:
            text = "".join([piece.text async for piece in _tracked(gen, tally)])
        except RequestFailed as err:
            raise ApiError(err.status_code, f"generation failed: {err}") from None
        metrics.requests.labels("200").inc()
        build = chat_body if gen.is_chat else completion_body
        use = usage(tally.num_prompt, tally.num_generated)
        return build(gen.request_id, gen.model, text, tally.finish_reason, use)

    async def _sse(gen: _Generation) -> AsyncIterator[str]:
        tally = _Tally(num_prompt=len(gen.prompt))
        if gen.is_chat:
            first = {"role": "assistant", "content": ""}
            yield _event(chat_chunk_body(gen.request_id, gen.model, first, None))
        try:
            async for piece in _tracked(gen, tally):
                if piece.token_ids or piece.finished:  # one event per token step, as vLLM
                    yield _event(_stream_body(gen, piece))
        except RequestFailed as err:  # the stream ends with an error event, then [DONE]
            metrics.requests.labels(str(err.status_code)).inc()
            yield _event(error_body(err.status_code, f"generation failed: {err}"))
        else:
            metrics.requests.labels("200").inc()
        if gen.include_usage:
            obj = "chat.completion.chunk" if gen.is_chat else "text_completion"
            use = usage(tally.num_prompt, tally.num_generated)
            yield _event(usage_chunk_body(gen.request_id, gen.model, obj, use))
        yield "data: [DONE]\n\n"

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The published document, true to the server: FastAPI's automatic 422 never happens
    (validation errors are 400 in OpenAI's shape), so it is not declared."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


def _stream_body(gen: _Generation, piece: Piece) -> dict[str, Any]:
    reason = piece.finish_reason if piece.finished else None
    if gen.is_chat:
        return chat_chunk_body(gen.request_id, gen.model, {"content": piece.text}, reason)
    return completion_body(gen.request_id, gen.model, piece.text, reason, None)


def _event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _describe(err: RequestValidationError) -> str:
    first = err.errors()[0]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON"
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    return f"invalid request: {where}: {first.get('msg', 'invalid value')}"
