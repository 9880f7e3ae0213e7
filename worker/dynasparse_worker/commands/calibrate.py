"""`dynasparse calibrate`: calibrate the gated model once and write (or refresh) the artifact.

Without `--out`, the artifact goes to the cache next to the cached model and is reused by `eval`
and `serve`. Heavy imports stay inside `run`.
"""

from __future__ import annotations

HELP = "calibrate a model's sparsity levels on calibration text and cache the artifact"


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="default", help="'default', a hub id, a local directory or a .gguf file")
    parser.add_argument("--out", default=None, help="artifact path (default: the cache, keyed by model and settings)")
    parser.add_argument("--sequences", type=int, default=8, help="calibration sequences (pydoc topics)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per calibration sequence")
    parser.add_argument("--floor", type=float, default=0.3, help="sparsest budget to calibrate")
    parser.add_argument("--force", action="store_true", help="recalibrate even if a cached artifact exists")
    parser.add_argument("--device", default="cpu")


def run(args) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from dynasparse_worker.errors import UserError
    from dynasparse_worker.gating import install_gates
    from dynasparse_worker.gating.artifact import calibration_for, default_artifact_path
    from dynasparse_worker.gating.calibrate import CalibrationSettings
    from dynasparse_worker.models import load_model

    if not 0.0 < args.floor < 1.0:
        raise UserError(f"--floor {args.floor:g} is outside (0, 1): pass e.g. 0.3")
    if args.sequences < 1 or args.seq_len < 16:
        raise UserError("--sequences must be >= 1 and --seq-len >= 16")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2 if args.device == "cpu" else 64)))
    settings = CalibrationSettings(sequences=args.sequences, seq_len=args.seq_len, floor=args.floor)
    loaded = load_model(args.model, device=args.device)
    gated = install_gates(loaded.model)
    path = args.out or str(default_artifact_path(loaded.name, loaded.fingerprint, settings))
    calibration = calibration_for(loaded, gated, settings, path=args.out,
                                  recalibrate=bool(args.force or args.out))
    table = Table(title=f"{loaded.name} calibrated levels (expected KL per token, batch 1)")
    table.add_column("budget")
    table.add_column("expected KL")
    for index in range(0, len(calibration.table.budgets), 5):
        table.add_row(f"{float(calibration.table.budgets[index]):.2f}",
                      f"{float(calibration.table.expected_loss[index, 0]):.4f}")
    console = Console()
    console.print(table)
    console.print(f"artifact: {path}")
    return 0
