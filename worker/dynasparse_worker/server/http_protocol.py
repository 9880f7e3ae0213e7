"""uvicorn's h11 protocol with a deadline on the request head.

uvicorn times out a connection only while it idles between requests; one that opens and never
sends a request, or trickles its headers a byte at a time, is held forever and counts against
`--max-connections` until the worker answers every new request with 503 (its liveness probe too).
Here a connection must deliver a complete request head within `timeout_keep_alive` seconds of
opening or of its previous response, or it is closed. Bodies have their own deadline
(server/limits.py).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeadDeadlineH11Protocol(H11Protocol):
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_overdue)

    def _disarm_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        # IDLE: no complete request head since the deadline was armed (a request in progress has
        # moved h11 on, and its own response re-arms the deadline when it completes).
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            try:
                self.timeout_keep_alive_handler()
            except h11.LocalProtocolError:
                self.transport.close()
