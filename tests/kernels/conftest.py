"""Kernel tests: run the Triton kernels in Triton's CPU interpreter unless a GPU is present.

`TRITON_INTERPRET` must be set before the kernel module is decorated, so it is set here and the
tests import `dynasparse_worker.kernels.triton_sparse` lazily (through `triton_kernels`).
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def triton_kernels():
    """The Triton kernel module (interpreted on CPU-only machines)."""
    from dynasparse_worker.kernels import triton_sparse

    interpreted = type(triton_sparse._input_sparse_kernel).__name__ == "InterpretedFunction"
    if not torch.cuda.is_available() and not interpreted:
        pytest.skip("triton_sparse was imported before TRITON_INTERPRET was set")
    return triton_sparse


@pytest.fixture
def gen() -> torch.Generator:
    """Fresh random inputs on every run; the seed is in `gen.initial_seed()` for failure messages."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request) -> str:
    """Where the Triton kernel runs: the CPU interpreter, or a real GPU (marked `gpu`)."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if request.param == "cpu" and torch.cuda.is_available():
        pytest.skip("the interpreter is off when a GPU is present; the cuda variant covers it")
    return request.param
