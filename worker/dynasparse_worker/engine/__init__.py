"""The inference engine: continuous batching over a preallocated KV cache, CUDA graphs, sampling.

`Engine` (engine.py) is the entry point; `types.py` holds the plain data it exchanges. `Engine` and
`EngineConfig` are imported lazily so that `dynasparse_worker.engine.types` stays torch-free.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Engine", "EngineConfig"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from dynasparse_worker.engine import engine

        return getattr(engine, name)
    raise AttributeError(name)
