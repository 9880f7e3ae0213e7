"""A short, stable fingerprint of a model's identity: architecture, shapes and sampled weight values.

Calibration artifacts store it and refuse to load onto a model whose fingerprint differs. Values are
rounded to bfloat16 before hashing so that the same weights loaded in fp32, fp16 or bf16 (or on
another device) give the same fingerprint. Called by `models.loading`.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

_SAMPLES_PER_TENSOR = 256


def model_fingerprint(model: nn.Module) -> str:
    """16 hex digits identifying `model`'s architecture and weights."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        arch = ",".join(getattr(config, "architectures", None) or [type(model).__name__])
        digest.update(f"{arch}|{getattr(config, 'model_type', '')}".encode())
    seen: set[int] = set()
    for name, tensor in sorted(model.state_dict().items()):
        if tensor.data_ptr() in seen and tensor.numel() > 0:
            continue  # tied weights: hash once
        seen.add(tensor.data_ptr())
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        flat = tensor.detach().reshape(-1)  # [N]
        step = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
        sample = flat[::step][:_SAMPLES_PER_TENSOR].to("cpu", torch.bfloat16)  # [<=256]
        digest.update(sample.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]
