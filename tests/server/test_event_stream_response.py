"""The SSE response of a streamed request, driven through its ASGI interface with a real event
queue: what it writes per wake, how it ends, and what a client that goes away does to it."""

from __future__ import annotations

import asyncio
import json

from dynasparse_worker.engine.types import TokenEvent
from dynasparse_worker.server.engine_loop import EventQueue, RequestHandle
from dynasparse_worker.server.limits import BODY_SEND
from dynasparse_worker.server.responses import Shape, SseChunks
from dynasparse_worker.server.sse_response import EventStreamResponse


def token(text: str, n: int) -> TokenEvent:
    return TokenEvent("r", [n], text, False, None, 2, n)


def last(text: str, n: int, reason: str = "length") -> TokenEvent:
    return TokenEvent("r", [n], text, True, reason, 2, n)


class Client:
    """The server side of one connection as the response sees it: what it sent, and a receive
    that reports a disconnect once `leave()` is called."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self._left = asyncio.Event()

    async def receive(self) -> dict:
        await self._left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    def leave(self) -> None:
        self._left.set()

    @property
    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


def stream(chat: bool = False) -> tuple[RequestHandle, EventStreamResponse, list[RequestHandle]]:
    handle = RequestHandle("r", 2, EventQueue())
    released: list[RequestHandle] = []
    return handle, EventStreamResponse(handle, SseChunks(Shape(chat, "m", False), 2),
                                       released.append), released


def texts(body: bytes) -> list[str]:
    return [json.loads(line[6:])["choices"][0]["text"] for line in body.split(b"\n\n")
            if line.startswith(b"data: {")]


def test_tokens_that_piled_up_between_wakes_are_written_as_one_body_chunk():
    async def scenario():
        handle, response, released = stream()
        client = Client()
        for n, text in enumerate([" a", " b", " c"], 1):
            handle.events.put_nowait(token(text, n))
        served = asyncio.ensure_future(response({"type": "http"}, client.receive, client.send))
        await asyncio.sleep(0.01)
        handle.events.put_nowait(last(" d", 4))
        await asyncio.wait_for(served, 5)
        return client, handle, released

    client, handle, released = asyncio.run(scenario())
    first, final = client.bodies
    assert texts(first) == [" a b c"]
    assert texts(final) == [" d"] and final.endswith(b"data: [DONE]\n\n")
    assert client.sent[-1]["more_body"] is False and released == [handle]


def test_a_client_that_goes_away_has_its_sequence_released_at_once_and_gets_no_more_writes():
    async def scenario():
        handle, response, released = stream()
        client = Client()
        served = asyncio.ensure_future(response({"type": "http"}, client.receive, client.send))
        handle.events.put_nowait(token(" a", 1))
        await asyncio.sleep(0.01)
        writes = len(client.sent)
        client.leave()
        await asyncio.sleep(0.01)
        released_before_next_token = list(released)
        handle.events.put_nowait(token(" b", 2))
        await asyncio.wait_for(served, 5)
        return client, handle, released, writes, released_before_next_token

    client, handle, released, writes, early = asyncio.run(scenario())
    assert handle in early  # before the engine produced its next token
    assert len(client.sent) == writes and texts(client.bodies[0]) == [" a"]


def test_an_engine_error_mid_stream_ends_it_with_an_error_event_and_done():
    async def scenario():
        handle, response, _ = stream()
        client = Client()
        handle.events.put_nowait(token(" a", 1))
        handle.events.put_nowait(last("", 1, "error: the engine stopped"))
        await asyncio.wait_for(response({"type": "http"}, client.receive, client.send), 5)
        return client

    client = asyncio.run(scenario())
    body = b"".join(client.bodies)
    events = [line[6:] for line in body.split(b"\n\n") if line]
    assert json.loads(events[-2])["error"]["message"] == "error: the engine stopped"
    assert events[-1] == b"[DONE]" and client.sent[-1]["more_body"] is False


def test_a_chat_stream_opens_with_the_role_chunk_before_any_token():
    async def scenario():
        handle, response, _ = stream(chat=True)
        client = Client()
        served = asyncio.ensure_future(response({"type": "http"}, client.receive, client.send))
        await asyncio.sleep(0.01)
        opened = list(client.bodies)
        handle.events.put_nowait(last("hi", 1))
        await asyncio.wait_for(served, 5)
        return opened

    (opening,) = asyncio.run(scenario())
    delta = json.loads(opening[6:])["choices"][0]["delta"]
    assert delta == {"role": "assistant", "content": ""}


def test_the_start_passes_every_middleware_and_the_body_goes_straight_to_the_connection():
    async def scenario():
        handle, response, _ = stream()
        through_middlewares, connection = Client(), Client()
        handle.events.put_nowait(token(" a", 1))
        handle.events.put_nowait(last(" b", 2))
        scope = {"type": "http", BODY_SEND: connection.send}
        await asyncio.wait_for(response(scope, connection.receive, through_middlewares.send), 5)
        return through_middlewares, connection

    through_middlewares, connection = asyncio.run(scenario())
    assert [m["type"] for m in through_middlewares.sent] == ["http.response.start"]
    assert texts(b"".join(connection.bodies)) == [" a b"]
