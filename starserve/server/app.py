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
from fastapi.responses import JSONResponse, Response, StreamingResponse
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
    usage,
    usage_chunk_body,
)
from starserve.server.streams import Piece, RequestFailed
from starserve.server.validate import (
    chat_messages,
    check_model,
    completion_prompt,
    sampling_params,
)

OPEN_PATHS = ("/health", "/metrics")  # answered without an API key


@dataclass(frozen=True, slots=True)
class ServerSettings:
    model_name: str
    api_key: str | None = None
    max_num_requests: int = 256  # admission limit: more in flight -> 429


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
        return JSONResponse(
            error_body(err.status_code, str(err.detail)), status_code=err.status_code
        )

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

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "starserve"}
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def prometheus() -> Response:
        latest = await backend.metrics()
        for pause in backend.pauses[state["num_pauses_seen"] :]:
            metrics.migration_pause.observe(pause.pause_ms / 1000)
        state["num_pauses_seen"] = len(backend.pauses)
        return Response(metrics.render(latest), media_type="text/plain; version=0.0.4")

    @app.get("/v1/cluster/stats")
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

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Response:
        check_model(body.model, settings.model_name)
        prompt = completion_prompt(body)
        ids = prompt if isinstance(prompt, list) else await backend.encode(prompt, None)
        return await _run(body, ids, is_chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        check_model(body.model, settings.model_name)
        ids = await backend.encode(None, chat_messages(body))
        return await _run(body, ids, is_chat=True)

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
            async for piece in backend.generate(gen.request_id, gen.prompt, gen.params):
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
            raise ApiError(500, f"generation failed: {err}") from None
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
        except RequestFailed as err:
            yield _event(error_body(500, f"generation failed: {err}"))
        else:
            metrics.requests.labels("200").inc()
        if gen.include_usage:
            obj = "chat.completion.chunk" if gen.is_chat else "text_completion"
            use = usage(tally.num_prompt, tally.num_generated)
            yield _event(usage_chunk_body(gen.request_id, gen.model, obj, use))
        yield "data: [DONE]\n\n"

    return app


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
