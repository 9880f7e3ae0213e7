"""Clients that misbehave on purpose, over raw sockets (httpx would refuse to), and the probes the
abuse tests measure with: /healthz latency under load, the process's resident memory, OpenAI-shaped
bodies."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float  # from the first byte sent to the status line received
    closed: bool  # the server closed the connection after answering


def _connect(url: str, timeout: float) -> socket.socket:
    u = urlparse(url)
    return socket.create_connection((u.hostname, u.port), timeout=timeout)


def _read_response(sock: socket.socket, started: float) -> RawResponse:
    buf = b""
    first_byte_at = None
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before a response: {buf!r}")
        first_byte_at = first_byte_at or time.monotonic()
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        data = sock.recv(65536)
        if not data:
            break
        body += data
    try:
        sock.settimeout(1.0)
        closed = sock.recv(1) == b""
    except socket.timeout:
        closed = False
    except OSError:  # reset: closed with our unread body still in its buffer
        closed = True
    return RawResponse(status, headers, body, (first_byte_at or time.monotonic()) - started, closed)


def head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def send_oversized(url: str, path: str, total: int, chunked: bool = False,
                   chunk: int = 1 << 20, timeout: float = 30.0) -> RawResponse:
    """POST a `total`-byte body as fast as the socket takes it (announced, or chunked), reading
    the answer concurrently: the server may answer and close long before the body is sent."""
    sock = _connect(url, timeout)
    hdrs = {"Content-Type": "application/json"}
    hdrs.update({"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(total)})
    piece = b"[" + b"1," * (chunk // 2 - 1) + b"1"  # JSON-ish filler, never valid as a whole

    def pump() -> None:
        sent = 0
        try:
            while sent < total:
                n = min(len(piece), total - sent)
                data = piece[:n]
                sock.sendall(f"{n:x}\r\n".encode() + data + b"\r\n" if chunked else data)
                sent += n
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server closed the connection after answering: expected

    started = time.monotonic()
    sock.sendall(head(path, hdrs))
    sender = threading.Thread(target=pump, daemon=True)
    sender.start()
    try:
        return _read_response(sock, started)
    finally:
        sock.close()
        sender.join(10)


def send_trickling(url: str, path: str, body: bytes, bytes_per_s: float, timeout: float = 30.0
                   ) -> RawResponse:
    """POST `body` announced in full but sent a byte at a time at `bytes_per_s`, until the server
    answers (or the body is through)."""
    sock = _connect(url, timeout)
    started = time.monotonic()
    sock.sendall(head(path, {"Content-Type": "application/json",
                             "Content-Length": str(len(body))}))
    stop = threading.Event()

    def trickle() -> None:
        try:
            for b in body:
                if stop.wait(1.0 / bytes_per_s):
                    return
                sock.sendall(bytes([b]))
        except OSError:
            pass

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        return _read_response(sock, started)
    finally:
        stop.set()
        sock.close()
        sender.join(5)


def rss_bytes() -> int:
    """Resident memory of this process (the workers under test run in it)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@dataclass
class HealthPoller:
    """Polls /healthz on a fresh connection every `interval_s` and keeps the worst latency."""

    url: str
    interval_s: float = 0.005
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "HealthPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    ok = client.get(f"{self.url}/healthz").status_code == 200
                    if not ok:
                        self.failures.append("status")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.latencies.append(time.monotonic() - t0)
                self._stop.wait(self.interval_s)

    @property
    def worst_s(self) -> float:
        return max(self.latencies, default=float("inf"))


def is_openai_error(body: bytes) -> bool:
    try:
        err = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return (isinstance(err, dict) and isinstance(err.get("message"), str)
            and isinstance(err.get("type"), str) and "param" in err and "code" in err)
