"""Limits on what one HTTP request may cost the worker before any handler sees it.

`RequestLimits` is an ASGI middleware around the whole API. It reads each request body itself and
hands the handler a complete one, so that:

* a body announced (Content-Length) or streamed (chunked) beyond `max_body_bytes` gets 413 at once,
  without reading the rest — memory never holds more than the cap per request;
* a body that does not arrive completely within `body_timeout_s` (a client trickling it) gets 408;
  both close the connection, and the partial body is dropped with the request;
* any exception a handler lets escape becomes an OpenAI-shaped 500 (`server_error`) and is logged,
  instead of a plain-text page a client library cannot parse.

Error bodies are rendered ASCII-only, so no input echoed in a message (a lone surrogate, say) can
break the rendering of the error itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from dynasparse_worker.server.openai_schema import error_body

log = logging.getLogger(__name__)

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The longest prompt a 2048-token context reads (see max_prompt_chars) is under 800 KB of JSON even
# if every character is escaped as a \uXXXX surrogate pair; a typical one is ~10 KB. Parsing holds the
# interpreter lock however it is threaded, so the cap also bounds how long one body can stall others.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_BODY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class HttpLimits:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S


class _Rejected(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class _ClientGone(Exception):
    pass


def error_bytes(message: str, param: str | None = None, type_: str = "invalid_request_error"
                ) -> bytes:
    """An OpenAI error body as ASCII JSON (non-ASCII and lone surrogates escaped)."""
    return json.dumps(error_body(message, param, type_), ensure_ascii=True).encode("ascii")


async def send_error(send: Send, status: int, message: str, param: str | None = None,
                     type_: str = "invalid_request_error", close: bool = False) -> None:
    body = error_bytes(message, param, type_)
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# Where RequestLimits leaves, in the scope, the send it was given. The layers inside it (its own
# start tracking, the framework's exception handlers) look only at a response's start message; a
# streamed response sends its start through them and its body chunks here, skipping a chain of
# wrapper coroutines per chunk on the event loop's hottest path.
BODY_SEND = "dynasparse.body_send"


class RequestLimits:
    def __init__(self, app: Any, limits: HttpLimits | None = None):
        self.app = app
        self.limits = limits or HttpLimits()

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read_body(scope, receive)
        except _Rejected as exc:
            await send_error(send, exc.status, exc.message, "body", close=True)
            return
        except _ClientGone:
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        scope[BODY_SEND] = send
        try:
            await self.app(scope, _replaying(body, receive), tracked_send)
        except Exception:  # noqa: BLE001 - the last line of defence; logged with its traceback
            log.exception("unhandled error serving %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await send_error(send, 500, "internal error while serving this request: the "
                                 "worker logged it; retry, and report it if it persists",
                                 type_="server_error")

    async def _read_body(self, scope: Message, receive: Receive) -> bytes:
        cap = self.limits.max_body_bytes
        announced = _content_length(scope)
        if announced is not None and announced > cap:
            raise _Rejected(413, _too_large(announced, cap))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout_s
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), remaining)
            except asyncio.TimeoutError:
                raise _Rejected(408, f"the request body did not arrive within "
                                f"{self.limits.body_timeout_s:g} s: send it at once (the worker's "
                                "--body-timeout)") from None
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                raise _Rejected(413, _too_large(size, cap, at_least=True))
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _content_length(scope: Message) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(size: int, cap: int, at_least: bool = False) -> str:
    more = "more than " if at_least else ""
    return (f"the request body is {more}{size} bytes, over this worker's limit of {cap} bytes "
            "(--max-body-bytes): send a shorter prompt")


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that hands out the already-read body once, then the connection's own events
    (so disconnects still reach the handler)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# No tokenizer turns more than this many characters into one token on ordinary text; a prompt with
# more characters than context × this cannot fit, and is refused before the tokenizer spends time
# (and memory) on it.
PROMPT_CHARS_PER_TOKEN = 32


def max_prompt_chars(context_len: int) -> int:
    return context_len * PROMPT_CHARS_PER_TOKEN


def max_json_separators(context_len: int) -> int:
    """Commas a request body may hold. Parsing cost grows with the number of JSON values, not
    bytes (a megabyte of `1,1,1,...` takes ~100 ms to parse, a megabyte of text ~5 ms); no prompt
    this context can read needs more values than it has characters, plus room for the other fields."""
    return max_prompt_chars(context_len) + 4096
