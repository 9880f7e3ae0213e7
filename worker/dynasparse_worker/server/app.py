"""The OpenAI-compatible HTTP API (FastAPI): completions, chat, models, health, readiness, metrics.

`create_app(ctx)` builds the ASGI app around a `WorkerContext`, which server/runtime.py fills in as
the worker starts (the engine loop appears once the model is loaded: until then `/readyz` is 503 and
generation endpoints answer 503). Admission errors follow OpenAI's error body: 400 naming the field,
401 for a wrong bearer token, 408/413 for a body too slow or too large (server/limits.py), 429 with
Retry-After when the queue is full, 503 while loading or draining. A client that disconnects has its
sequence cancelled (its KV freed).

JSON parsing, validation, the chat template and tokenization run in small thread pools, never on the
event loop: a large body costs its own request time, not the latency of `/healthz` or of other
streams. Prompts longer in characters than the context could hold are refused before tokenizing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from dynasparse_worker.control.supervisor import Supervisor
from dynasparse_worker.engine.types import TokenEvent
from dynasparse_worker.server.auth import ApiKey
from dynasparse_worker.server.chat import chat_prompt_ids, completion_prompt_ids
from dynasparse_worker.server.engine_loop import EngineLoop, NotAdmitting, QueueFull, RequestHandle
from dynasparse_worker.server.limits import (
    HttpLimits, RequestLimits, error_bytes, max_json_separators, max_prompt_chars,
)
from dynasparse_worker.server.metrics import CONTENT_TYPE, WorkerMetrics
from dynasparse_worker.server.openai_schema import (
    ChatCompletionRequest, CompletionRequest, first_error,
)
from dynasparse_worker.server.responses import GenerationFailed, Shape, SseChunks, whole_response
from dynasparse_worker.server.sse_response import EventStreamResponse

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class WorkerContext:
    supervisor: Supervisor
    metrics: WorkerMetrics
    model_name: str
    auth: ApiKey = field(default_factory=ApiKey)  # no key: open
    metrics_auth: bool = False  # /metrics needs the key too (Prometheus must then send it)
    limits: HttpLimits = field(default_factory=HttpLimits)
    engine_loop: EngineLoop | None = None  # set once the model is loaded
    tokenizer: Any = None
    context_len: int = 0  # prompt + completion tokens a sequence may hold
    vocab_size: int = 0  # token ids given as a prompt must lie in [0, vocab_size)
    default_max_tokens: int = 256  # chat requests without max_tokens
    retry_after_s: int = 1
    created: int = 0
    # JSON parsing and validation, off the event loop; a few threads bound the CPU bodies take.
    parse_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="http-parse"))
    # The chat template and tokenization: one thread, as a fast tokenizer is not safe to share.
    tokenize_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="http-tokenize"))


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 type_: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type_ = status, message, param, type_
        self.headers = headers or {}

    def response(self) -> Response:
        return Response(error_bytes(self.message, self.param, self.type_), self.status,
                        headers=self.headers, media_type="application/json")


def create_app(ctx: WorkerContext) -> FastAPI:
    app = FastAPI(title="dynasparse worker", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestLimits, limits=ctx.limits)
    ctx.created = ctx.created or int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Unknown paths and methods answer in OpenAI's error shape too."""
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return ApiError(exc.status_code, message, type_="invalid_request_error",
                        headers=dict(exc.headers or {})).response()

    @app.get("/healthz")
    async def healthz() -> Response:
        if ctx.engine_loop is not None and not ctx.engine_loop.alive:
            return JSONResponse({"status": "the engine stopped"}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if ctx.supervisor.ready:
            return JSONResponse({"ready": True})
        reason = "draining" if ctx.supervisor.draining else "loading the model"
        return JSONResponse({"ready": False, "reason": reason}, 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if ctx.metrics_auth:
            _check_auth(ctx, request)
        ctx.metrics.refresh(ctx.supervisor.snapshot())
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        _check_auth(ctx, request)
        return {"object": "list", "data": [{"id": ctx.model_name, "object": "model",
                                            "created": ctx.created, "owned_by": "dynasparse"}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _generate(ctx, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _generate(ctx, request, chat=True)

    return app


def _check_auth(ctx: WorkerContext, request: Request) -> None:
    if not ctx.auth.accepts(request.headers.get("authorization")):
        raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                       type_="authentication_error")


async def _generate(ctx: WorkerContext, request: Request, chat: bool) -> Response:
    endpoint = "chat" if chat else "completions"
    status = "error"
    try:
        response, status = await _admit_and_run(ctx, request, chat)
        return response
    except ApiError as exc:
        status = str(exc.status)
        return exc.response()
    finally:
        ctx.metrics.requests.labels(endpoint, status).inc()
        ctx.supervisor.count_request(ok=status not in ("500", "error"))  # 4xx/503: rejections


async def _admit_and_run(ctx: WorkerContext, request: Request, chat: bool) -> tuple[Response, str]:
    _check_auth(ctx, request)
    loop = ctx.engine_loop
    if loop is None:
        raise ApiError(503, "the model is still loading: retry shortly", type_="unavailable",
                       headers={"Retry-After": str(ctx.retry_after_s)})
    if not ctx.supervisor.admitting:
        raise ApiError(503, "this worker is draining and admits no new requests: send it to another "
                       "replica", type_="unavailable", headers={"Retry-After": "1"})
    raw = await request.body()
    req = await _off_loop(ctx.parse_pool, _parse_request, raw, chat, ctx.context_len)
    prompt_ids = await _off_loop(ctx.tokenize_pool, _prompt_ids, ctx, req, chat)
    wanted = req.requested_max_tokens if chat else req.max_tokens
    max_tokens = _check_lengths(ctx, len(prompt_ids), wanted, "messages" if chat else "prompt")
    try:
        handle = loop.submit(prompt_ids, req.sampling(max_tokens))
    except QueueFull as exc:
        raise ApiError(429, f"the worker's queue is full ({exc}): retry after "
                       f"{ctx.retry_after_s} s", type_="rate_limit_error",
                       headers={"Retry-After": str(ctx.retry_after_s)}) from None
    except NotAdmitting as exc:
        raise ApiError(503, str(exc), type_="unavailable") from None
    shape = Shape(chat=chat, model=ctx.model_name, include_usage=req.include_usage)
    if req.stream:
        return EventStreamResponse(handle, SseChunks(shape, handle.prompt_tokens),
                                   loop.release), "streaming"
    try:
        text, final = await _collect_unless_disconnected(request, handle)
    finally:
        loop.release(handle)
    if final is None:
        return Response(status_code=499), "disconnected"
    try:
        return JSONResponse(whole_response(shape, text, final, handle.prompt_tokens)), "200"
    except GenerationFailed as exc:
        raise ApiError(500, str(exc), type_="server_error") from None


async def _off_loop(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


def _parse_request(raw: bytes, chat: bool, context_len: int
                   ) -> ChatCompletionRequest | CompletionRequest:
    """The validated request of a body (in a pool thread); ApiError 400 naming what is wrong."""
    separators, most = raw.count(b","), max_json_separators(context_len)
    if separators > most:
        raise ApiError(400, f"the body holds {separators} JSON values, more than any request to a "
                       f"{context_len}-token context needs (at most {most}): send fewer", "body")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", "body") from None
    except RecursionError:
        raise ApiError(400, "the body is not valid JSON: nested too deeply", "body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", "body")
    model_cls = ChatCompletionRequest if chat else CompletionRequest
    try:
        return model_cls.model_validate(body)
    except ValidationError as exc:
        param, message = first_error(exc)
        raise ApiError(400, message, param) from None
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply", "body") from None


def _prompt_ids(ctx: WorkerContext, req: Any, chat: bool) -> list[int]:
    """The prompt's token ids (in the tokenizer thread), after the checks that need no tokenizer:
    length in characters, encodable text, token ids within the vocabulary."""
    field_name = "messages" if chat else "prompt"
    if isinstance(getattr(req, "prompt", None), list):
        ids = req.prompt
        if len(ids) >= ctx.context_len:
            _check_lengths(ctx, len(ids), None, field_name)
        if ctx.vocab_size and any(not 0 <= t < ctx.vocab_size for t in ids):
            raise ApiError(400, f"prompt: token ids must lie in [0, {ctx.vocab_size})", "prompt")
        return completion_prompt_ids(ctx.tokenizer, ids)
    texts = [m.text() for m in req.messages] if chat else [req.prompt]
    chars, cap = sum(len(t) for t in texts), max_prompt_chars(ctx.context_len)
    if chars > cap:
        raise ApiError(400, f"{field_name}: the prompt has {chars} characters, more than a "
                       f"{ctx.context_len}-token context can hold (at most {cap} are read): "
                       "shorten it", field_name)
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ApiError(400, f"{field_name}: the text is not valid Unicode ({exc.reason} at "
                           f"character {exc.start}): send UTF-8 text, without lone surrogate "
                           "escapes such as \\ud800", field_name) from None
    if chat:
        return chat_prompt_ids(ctx.tokenizer, req.messages)
    return completion_prompt_ids(ctx.tokenizer, req.prompt)


def _check_lengths(ctx: WorkerContext, prompt_len: int, wanted: int | None, prompt_field: str) -> int:
    """The max_tokens to use; 400 if the prompt (or prompt + max_tokens) exceeds the context."""
    if prompt_len == 0:
        raise ApiError(400, f"{prompt_field}: the prompt is empty", prompt_field)
    if prompt_len >= ctx.context_len:
        raise ApiError(400, f"{prompt_field}: the prompt has {prompt_len} tokens, but this "
                       f"model's context holds {ctx.context_len} (prompt + completion)",
                       prompt_field)
    room = ctx.context_len - prompt_len
    if wanted is None:
        return min(ctx.default_max_tokens, room)
    if wanted > room:
        raise ApiError(400, f"max_tokens: {wanted} completion tokens do not fit after a "
                       f"{prompt_len}-token prompt in a {ctx.context_len}-token context "
                       f"(at most {room})", "max_tokens")
    return wanted


async def _events(handle: RequestHandle) -> AsyncIterator[TokenEvent]:
    while True:
        ev = await handle.events.get()
        yield ev
        if ev.finished:
            return


async def _collect_unless_disconnected(request: Request, handle: RequestHandle
                                       ) -> tuple[str, TokenEvent | None]:
    """All the text and the final event, or (partial, None) if the client went away first."""
    parts: list[str] = []

    async def collect() -> TokenEvent:
        async for ev in _events(handle):
            parts.append(ev.text)
            if ev.finished:
                return ev
        raise AssertionError("unreachable")

    async def disconnected() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.1)

    collector, watcher = asyncio.create_task(collect()), asyncio.create_task(disconnected())
    try:
        await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not collector.done():
            collector.cancel()
    if collector.done() and not collector.cancelled():
        return "".join(parts), collector.result()
    return "".join(parts), None
