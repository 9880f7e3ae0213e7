"""The streamed response of one generation request: its engine events as server-sent events.

This is the hottest path of the event loop (every step wakes every stream), so it does the least
per step: it awaits the request's event queue (which merges whatever piled up since the last wake)
and writes all of it as one body chunk, with `send` called directly rather than through a chain of
async generators and a task group per response, and past the middlewares that only watch a
response's start (server/limits.py `BODY_SEND`). A client that goes away (the server's receive says
`http.disconnect`) has its sequence cancelled at once, freeing its KV slot, and the stream stops.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from starlette.responses import Response

from dynasparse_worker.engine.types import TokenEvent
from dynasparse_worker.server.engine_loop import RequestHandle
from dynasparse_worker.server.limits import BODY_SEND
from dynasparse_worker.server.responses import SseChunks

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, handle: RequestHandle, chunks: SseChunks,
                 release: Callable[[RequestHandle], None]):
        """`release(handle)` is called once the stream ends, however it ends (it cancels the
        sequence if the engine has not finished it)."""
        self.handle, self.chunks, self.release = handle, chunks, release
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache"})

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        handle, events = self.handle, self.handle.events
        ended = gone = False

        def on_disconnect(watch: asyncio.Future) -> None:
            nonlocal gone
            if ended or watch.cancelled():
                return
            watch.exception()  # a receive that failed means the connection is gone too
            gone = True
            self.release(handle)  # cancel the sequence now, not at its next token
            events.put_nowait(TokenEvent(handle.request_id, [], "", True, "cancelled"))  # wake up

        send_body = scope.get(BODY_SEND, send)  # the start goes through every layer, the body not
        watcher = asyncio.ensure_future(_until_disconnect(receive))
        watcher.add_done_callback(on_disconnect)
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            opening = self.chunks.opening()
            if opening:
                await send_body({"type": "http.response.body", "body": opening, "more_body": True})
            while True:
                ev = await events.get()
                if gone:
                    return
                body = self.chunks.event(ev)
                if body or ev.finished:
                    await send_body({"type": "http.response.body", "body": body,
                                     "more_body": not ev.finished})
                if ev.finished:
                    return
        finally:
            ended = True
            watcher.cancel()
            self.release(handle)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
