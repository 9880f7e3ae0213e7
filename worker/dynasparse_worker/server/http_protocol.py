"""uvicorn's HTTP protocols with a deadline on the request head, and the one the worker serves with.

uvicorn times out a connection only while it idles between requests; one that opens and never
sends a request, or trickles its headers a byte at a time, is held forever and counts against
`--max-connections` until the worker answers every new request with 503 (its liveness probe too).
Here a connection must deliver a complete request head within `timeout_keep_alive` seconds of
opening or of its previous response, or it is closed. Bodies have their own deadline
(server/limits.py).

The worker serves with uvicorn's httptools protocol where httptools is installed (its parser is C,
and it writes response chunks with less Python per write than h11: the event loop spends less per
streamed token), else with the pure-Python h11 one; both carry the same deadline.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed (or not built for this platform)
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


class HeadDeadline:
    """The deadline, for a uvicorn protocol class: mixed in before it. The protocol says whether
    it still waits for a complete request head (`_awaiting_head`) and how it closes (uvicorn's
    `timeout_keep_alive_handler`)."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._arm_head_deadline()

    def _awaiting_head(self) -> bool:
        raise NotImplementedError

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self._head_timer = self.loop.call_later(  # type: ignore[attr-defined]
            self.timeout_keep_alive, self._head_overdue)  # type: ignore[attr-defined]

    def _disarm_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        # A request in progress has no deadline here: its own response re-arms it when it completes.
        if self._awaiting_head() and not self.transport.is_closing():  # type: ignore[attr-defined]
            try:
                self.timeout_keep_alive_handler()  # type: ignore[attr-defined]
            except h11.LocalProtocolError:  # h11 refuses to close mid-message: close the socket
                self.transport.close()  # type: ignore[attr-defined]


class HeadDeadlineH11Protocol(HeadDeadline, H11Protocol):
    def _awaiting_head(self) -> bool:
        # IDLE: no complete request head since the deadline was armed.
        return self.conn.their_state is h11.IDLE


if HttpToolsProtocol is not None:
    class HeadDeadlineHttpToolsProtocol(HeadDeadline, HttpToolsProtocol):
        def _awaiting_head(self) -> bool:
            # A complete head makes a new cycle (a pipelined one too), whose response is pending.
            return self.cycle is None or self.cycle.response_complete
else:
    HeadDeadlineHttpToolsProtocol = None  # type: ignore[assignment,misc]


def http_protocol_class() -> type:
    """The protocol the worker serves with: httptools where installed, else h11."""
    return HeadDeadlineHttpToolsProtocol or HeadDeadlineH11Protocol
