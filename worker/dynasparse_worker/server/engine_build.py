"""Builds the serving engine from `ServeSettings`, and describes it in plain data.

One definition of how `dynasparse serve` turns its settings into an `Engine` (device, model,
calibration, the `--budget` floor check, batch and KV sizing), called by the worker runtime on a
load thread (engine thread mode) and by the engine child process (engine process mode, which gets
the settings pickled and builds the engine itself). `EngineInfo` is what the HTTP side needs to know
about the engine that was built: plain data, so it crosses the process boundary unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dynasparse_worker.errors import UserError


@dataclass
class EngineInfo:
    """The built engine as the HTTP process sees it (picklable)."""

    model_name: str
    tokenizer: Any
    context_len: int
    vocab_size: int
    num_slots: int
    max_seq_len: int
    graphs: int
    eos_ids: frozenset[int]
    gated: bool = False
    floor: float = 1.0
    quality_curve: list[tuple[float, float]] = field(default_factory=list)
    speed_curve: list[tuple[float, float]] = field(default_factory=list)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_engine(settings: Any, loaded: Any | None = None, gated: Any | None = None):
    """(engine, loaded, gated) for `settings`; `loaded` / `gated` are used when given (tests, the
    demo), else loaded from `settings.model` / `settings.calibration`."""
    from dynasparse_worker.engine.engine import Engine, EngineConfig
    from dynasparse_worker.engine.model_runner import DEFAULT_BUCKETS

    s = settings
    device = resolve_device(s.device)
    if loaded is None:
        from dynasparse_worker.models.loading import load_model

        loaded = load_model(s.model, device=device)
    if gated is None and s.calibration:
        gated = load_gated(loaded, s.calibration)
    if gated is not None and s.initial_budget < float(gated.floor) - 1e-9:
        raise UserError(f"--budget {s.initial_budget:g} is below the calibrated floor "
                        f"{float(gated.floor):.3f} of {loaded.name}: pass --budget "
                        f"{float(gated.floor):.3f} or more")
    on_cuda = device.startswith("cuda")
    max_batch = s.max_batch_size or (max(DEFAULT_BUCKETS) if on_cuda else 16)
    config = EngineConfig(max_batch_size=max_batch, max_seq_len=s.max_seq_len,
                          kv_capacity_tokens=s.kv_tokens, cuda_graphs=on_cuda,
                          kv_memory_fraction=s.kv_memory_fraction,
                          detokenize=False)  # the engine loop's output thread does it
    state = gated.state if gated is not None else None
    return Engine.from_loaded(loaded, config, state=state), loaded, gated


def engine_info(engine: Any, loaded: Any, actuator: Any | None) -> EngineInfo:
    """Describe `engine` (built from `loaded`); `actuator`: its `GatedActuator`, None if dense."""
    max_seq_len = int(engine.config.max_seq_len)
    model_config = getattr(loaded, "model", None)
    model_config = getattr(model_config, "config", None)
    info = EngineInfo(
        model_name=loaded.name, tokenizer=loaded.tokenizer,
        context_len=min(max_seq_len, int(getattr(model_config, "max_position_embeddings",
                                                 max_seq_len))),
        vocab_size=int(getattr(model_config, "vocab_size", 0) or 0),
        num_slots=max(1, int(engine.runner.cache.num_slots)),
        max_seq_len=int(engine.runner.cache.max_seq_len),
        graphs=len(getattr(engine.runner, "graphs", ()) or ()),
        eos_ids=frozenset(getattr(engine, "eos_ids", ())))
    if actuator is not None:
        info.gated = True
        info.floor = actuator.min_budget()
        info.quality_curve = list(actuator.quality_curve())
        info.speed_curve = list(actuator.speed_curve())
    return info


def load_gated(loaded: Any, calibration: str) -> Any:
    """The calibrated `GatedModel` of `loaded`: gates installed, plan table attached.

    `calibration` is "auto" (the cached artifact for this model, calibrated once on demand; for a
    `shape:` model of random weights, a synthetic plan from its activations) or the path of an
    artifact written by `dynasparse calibrate`."""
    from dynasparse_worker.gating import install_gates

    gated = install_gates(loaded.model)
    if getattr(loaded, "synthetic", False) and calibration == "auto":
        from dynasparse_worker.gating.synthetic_plan import synthetic_calibration

        synthetic_calibration(gated, loaded.model.device)
        return gated
    from dynasparse_worker.gating.artifact import calibration_for

    calibration_for(loaded, gated, path=None if calibration == "auto" else calibration,
                    progress=False)
    return gated
