"""The calibration artifact: one safetensors file (plan table, column scales, uniform baseline) whose
metadata holds JSON with the model fingerprint, the settings and the measured levels.

Written atomically (temporary file + rename) under `cache_root()/calibration/`, keyed by model
fingerprint and settings; `load_artifact` refuses a file made for another model. `calibration_for`
loads the cached artifact or calibrates and writes it. Called by the eval/calibrate commands and the
server.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import torch

from dynasparse_worker.errors import UserError
from dynasparse_worker.gating.calibrate import Calibration, CalibrationSettings, calibrate
from dynasparse_worker.gating.planner import PlanTable
from dynasparse_worker.models.loading import cache_root

FORMAT = "dynasparse-calibration/1"


def default_artifact_path(model_name: str, fingerprint: str, settings: CalibrationSettings) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name)[:60]
    return cache_root() / "calibration" / f"{safe}-{fingerprint}-{settings.key()}.safetensors"


def save_artifact(calibration: Calibration, path: Path) -> Path:
    from safetensors.torch import save_file

    table = calibration.table
    tensors = {
        "budgets": table.budgets.clone(),
        "thresholds": table.thresholds.contiguous(),
        "layer_keep": table.layer_keep.contiguous(),
        "expected_loss": table.expected_loss.contiguous(),
        "uniform": calibration.uniform.contiguous(),
    }
    for layer, scales in enumerate(table.col_scale):
        for group, scale in enumerate(scales):
            tensors[f"col_scale.{layer}.{group}"] = scale.float().contiguous()
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(calibration.settings).items()}
    meta = {
        "format": FORMAT,
        "fingerprint": calibration.fingerprint,
        "model": calibration.model_name,
        "settings": settings,
        "measured": calibration.measured,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"dynasparse": json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_artifact(path: Path, fingerprint: str | None = None) -> Calibration:
    """Read an artifact; UserError if unreadable or made for a model with another fingerprint."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("dynasparse", "{}"))
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user problem
        raise UserError(f"{path} is not a dynasparse calibration file: pass another file or recalibrate") from exc
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a dynasparse calibration file: pass another file or recalibrate")
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise UserError(
            f"{path} was calibrated for model {meta.get('model')!r} (fingerprint {meta.get('fingerprint')}), "
            f"not this one ({fingerprint}): run `dynasparse calibrate` for this model"
        )
    raw = dict(meta["settings"])
    raw["bucket_edges"] = tuple(raw["bucket_edges"])
    settings = CalibrationSettings(**raw)
    layers = tensors["thresholds"].shape[2]
    col_scale = [[tensors[f"col_scale.{l}.{g}"] for g in range(4)] for l in range(layers)]
    table = PlanTable(settings.bucket_edges, tensors["budgets"], tensors["thresholds"], tensors["layer_keep"],
                      tensors["expected_loss"], col_scale)
    return Calibration(table, tensors["uniform"], settings, meta["fingerprint"], meta["model"],
                       meta.get("measured", {}))


def calibration_for(loaded, gated, settings: CalibrationSettings | None = None, path: str | None = None,
                    progress: bool = True, recalibrate: bool = False) -> Calibration:
    """Load the cached (or given) artifact for `loaded`'s model, else calibrate and cache it; attach."""
    from dynasparse_worker import corpora

    settings = settings or CalibrationSettings()
    if path is not None and not recalibrate:
        target = Path(path)
        if not target.is_file():
            raise UserError(f"calibration file {path} does not exist: run `dynasparse calibrate --out {path}`")
        calibration = load_artifact(target, loaded.fingerprint)
    else:
        target = Path(path) if path else default_artifact_path(loaded.name, loaded.fingerprint, settings)
        if target.is_file() and not recalibrate:
            calibration = load_artifact(target, loaded.fingerprint)
        else:
            total = settings.sequences + settings.validation_sequences
            ids = corpora.token_sequences(loaded.tokenizer, corpora.calibration_text(), total,
                                          settings.seq_len, "the calibration text (pydoc topics)")
            calibration = calibrate(gated, ids[: settings.sequences], ids[settings.sequences:], settings,
                                    loaded.fingerprint, loaded.name, progress)
            save_artifact(calibration, target)
    if calibration.table.thresholds.shape[2] != gated.structure.num_layers:
        raise UserError(f"{target} does not match this model's layers: recalibrate")
    gated.attach(calibration.table)
    return calibration
