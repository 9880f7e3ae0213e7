"""OpenAI response bodies from engine `TokenEvent`s: whole responses and server-sent-event streams.

Called by server/app.py. Streams end with a chunk carrying `finish_reason` *and* `usage` (always),
then, if the client asked with `stream_options.include_usage`, the OpenAI-style usage-only chunk
(`choices: []`), then `data: [DONE]`.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from dynasparse_worker.engine.types import TokenEvent


@dataclass(frozen=True)
class Shape:
    """Which OpenAI object to build."""

    chat: bool
    model: str
    include_usage: bool

    @property
    def id_prefix(self) -> str:
        return "chatcmpl" if self.chat else "cmpl"

    @property
    def object_name(self) -> str:
        return "chat.completion" if self.chat else "text_completion"


class GenerationFailed(Exception):
    """The engine ended the request with an error."""


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def finish_reason_of(ev: TokenEvent) -> str:
    reason = ev.finish_reason or "stop"
    if reason.startswith("error"):
        raise GenerationFailed(reason)
    return reason if reason in ("stop", "length") else "stop"


def whole_response(shape: Shape, text: str, final: TokenEvent, prompt_tokens: int) -> dict:
    reason = finish_reason_of(final)
    choice: dict = {"index": 0, "finish_reason": reason, "logprobs": None}
    if shape.chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {
        "id": f"{shape.id_prefix}-{uuid.uuid4().hex}", "object": shape.object_name,
        "created": int(time.time()), "model": shape.model, "choices": [choice],
        "usage": usage(prompt_tokens, final.completion_tokens),
    }


def _sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


_SLOT = "\x00text\x00"  # stands for the text in a chunk template; JSON escapes it uniquely


def _text_chunk_writer(template: bytes):
    """The per-token chunk, the hottest bytes a worker writes: `template` is the stream's chunk
    with `_SLOT` as its text, rendered once; each token only splices its JSON-escaped text in
    (the same bytes as rendering the whole chunk, without building and encoding it again)."""
    head, tail = template.split(json.dumps(_SLOT).encode(), 1)

    def render(text: str) -> bytes:
        return head + json.dumps(text).encode() + tail

    return render


class SseChunks:
    """The SSE bytes of one request's stream, event by event: `opening()` before any event (the
    chat role chunk), then `event(ev)` for each (merged) engine event, whose text chunk, or for the
    finished one the closing chunks and `[DONE]`, come as one piece to write at once."""

    def __init__(self, shape: Shape, prompt_tokens: int):
        self.shape, self.prompt_tokens = shape, prompt_tokens
        self._rid, self._created = f"{shape.id_prefix}-{uuid.uuid4().hex}", int(time.time())
        self._obj = "chat.completion.chunk" if shape.chat else "text_completion"
        self._text_chunk = _text_chunk_writer(self._chunk([self._choice(_SLOT, None)]))

    def _chunk(self, choices: list[dict], extra: dict | None = None) -> bytes:
        body = {"id": self._rid, "object": self._obj, "created": self._created,
                "model": self.shape.model, "choices": choices}
        return _sse({**body, **(extra or {})})

    def _choice(self, text: str | None, reason: str | None, first: bool = False) -> dict:
        if self.shape.chat:
            delta: dict = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            return {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
        return {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}

    def opening(self) -> bytes:
        return self._chunk([self._choice(None, None, first=True)]) if self.shape.chat else b""

    def event(self, ev: TokenEvent) -> bytes:
        if not ev.finished:
            return self._text_chunk(ev.text) if ev.text else b""
        try:
            reason = finish_reason_of(ev)
        except GenerationFailed as exc:
            return _sse({"error": {"message": str(exc), "type": "server_error", "param": None,
                                   "code": None}}) + _DONE
        used = usage(self.prompt_tokens, ev.completion_tokens)
        closing = self._chunk([self._choice(ev.text, reason)], {"usage": used})
        if self.shape.include_usage:
            closing += self._chunk([], {"usage": used})
        return closing + _DONE


_DONE = _sse("[DONE]")
