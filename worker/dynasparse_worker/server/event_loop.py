"""The event loop a worker runs on: uvloop's where it is installed, asyncio's otherwise.

The HTTP server, the SSE streams and the engine's hand-offs all run on this loop and share the
interpreter lock with the engine thread, so the loop's own cost per callback and per socket write
bounds the tokens per second a worker can stream; uvloop's (libuv, in C) is the cheaper one.
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine, TypeVar

try:
    import uvloop
except ImportError:  # not installed (uvloop does not run on Windows)
    uvloop = None  # type: ignore[assignment]

T = TypeVar("T")


def loop_name() -> str:
    return "uvloop" if uvloop is not None else "asyncio"


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the worker's event loop."""
    if uvloop is not None:
        return uvloop.run(main)
    return asyncio.run(main)
