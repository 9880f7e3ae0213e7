"""The request-head deadline holds for both HTTP protocols the worker can serve with (httptools where
installed, h11 otherwise): a real uvicorn server on loopback per protocol, a tiny ASGI app, raw
sockets as the clients."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time

import pytest
import uvicorn

from dynasparse_worker.server import event_loop
from dynasparse_worker.server.http_protocol import (
    HeadDeadlineH11Protocol, HeadDeadlineHttpToolsProtocol, http_protocol_class,
)

DEADLINE_S = 0.4
SLOW_RESPONSE_S = 3 * DEADLINE_S

PROTOCOLS = [pytest.param(HeadDeadlineH11Protocol, id="h11"),
             pytest.param(HeadDeadlineHttpToolsProtocol, id="httptools",
                          marks=pytest.mark.skipif(HeadDeadlineHttpToolsProtocol is None,
                                                   reason="httptools is not installed"))]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/slow":
        await asyncio.sleep(SLOW_RESPONSE_S)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(params=PROTOCOLS)
def port(request):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, http=request.param, lifespan="off",
                                           log_level="warning", timeout_keep_alive=DEADLINE_S))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # not the main thread
    thread = threading.Thread(target=lambda: event_loop.run(server.serve(sockets=[sock])),
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)


def closed_after(conn: socket.socket, wait_s: float) -> float | None:
    """Seconds until the server closed `conn` (None if it stayed open for `wait_s`)."""
    conn.settimeout(wait_s)
    began = time.monotonic()
    try:
        while conn.recv(4096):
            pass
    except socket.timeout:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - began


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def test_the_worker_serves_with_httptools_where_it_is_installed():
    expected = HeadDeadlineHttpToolsProtocol or HeadDeadlineH11Protocol
    assert http_protocol_class() is expected


def test_a_connection_that_never_sends_a_request_is_closed_at_the_head_deadline(port):
    with socket.create_connection(("127.0.0.1", port)) as conn:
        took = closed_after(conn, 5 * DEADLINE_S)
    assert took is not None and took < 3 * DEADLINE_S


def test_a_request_head_trickled_past_the_deadline_is_closed(port):
    with socket.create_connection(("127.0.0.1", port)) as conn:
        began, closed = time.monotonic(), False
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n":  # never the blank line
                conn.sendall(bytes([byte]))
                time.sleep(DEADLINE_S / 8)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        closed = closed or closed_after(conn, 5 * DEADLINE_S) is not None
    assert closed and time.monotonic() - began < 10 * DEADLINE_S


def test_a_response_slower_than_the_deadline_is_answered_and_the_idle_connection_closed(port):
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(request("/slow"))
        conn.settimeout(5 * SLOW_RESPONSE_S)
        answer = b""
        while not answer.endswith(b"ok"):
            answer += conn.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200")
        took = closed_after(conn, 5 * DEADLINE_S)
    assert took is not None and took < 3 * DEADLINE_S


def test_a_keep_alive_connection_serves_requests_sent_within_the_deadline(port):
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.settimeout(5)
        for _ in range(3):
            time.sleep(DEADLINE_S / 2)
            conn.sendall(request("/"))
            answer = b""
            while not answer.endswith(b"ok"):
                answer += conn.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200")


def test_without_uvloop_and_httptools_the_worker_serves_with_asyncio_and_h11():
    probe = ("import sys\n"
             "for name in ('uvloop', 'httptools'):\n"
             "    sys.modules[name] = None  # importing it now raises ImportError\n"
             "import asyncio\n"
             "from dynasparse_worker.server import event_loop\n"
             "from dynasparse_worker.server.http_protocol import http_protocol_class\n"
             "async def loop_type():\n"
             "    return type(asyncio.get_running_loop()).__module__\n"
             "print(http_protocol_class().__name__, event_loop.loop_name(),\n"
             "      event_loop.run(loop_type()).split('.')[0])\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["HeadDeadlineH11Protocol", "asyncio", "asyncio"]
