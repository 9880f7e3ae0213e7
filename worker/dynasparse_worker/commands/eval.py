"""`dynasparse eval`: quality of the gated model at a list of budgets, beside a uniform baseline.

Loads the model, calibrates it (or reuses the cached artifact), evaluates on held-out text (default:
Debian's fortunes) and prints a table; `--json` and `--plot` are written only when everything
succeeded, atomically. Heavy imports stay inside `run`.
"""

from __future__ import annotations

HELP = "measure perplexity, KL to dense, top-1 agreement and bytes skipped per budget (vs a uniform baseline)"


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="default", help="'default', a hub id, a local directory or a .gguf file")
    parser.add_argument("--budgets", default="1,0.9,0.75,0.6,0.5", help="comma-separated budgets in (0, 1]")
    parser.add_argument("--text", default=None, help="plain-text file to evaluate on (default: Debian fortunes)")
    parser.add_argument("--sequences", type=int, default=48)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--calibration", default=None, help="calibration artifact (default: cached, made on demand)")
    parser.add_argument("--json", default=None, help="write {'model': ..., 'rows': [...]} here")
    parser.add_argument("--plot", default=None, help="write a PNG of quality vs bytes skipped here")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def parse_budgets(text: str) -> list[float]:
    from dynasparse_worker.errors import UserError

    try:
        budgets = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise UserError(f"--budgets {text!r} is not a list of numbers: pass e.g. 1,0.75,0.5") from exc
    if not budgets:
        raise UserError("--budgets is empty: pass e.g. 1,0.75,0.5")
    for budget in budgets:
        if not 0.0 < budget <= 1.0:
            raise UserError(f"budget {budget:g} is outside (0, 1]: pass fractions such as 0.75")
    return budgets


def _check_writable(path: str | None, flag: str) -> None:
    from pathlib import Path

    from dynasparse_worker.errors import UserError

    if path and not Path(path).expanduser().resolve().parent.is_dir():
        raise UserError(f"{flag} {path}: its directory does not exist; create it or pass another path")


def _write_json(path: str, payload: dict) -> None:
    import json
    import os
    import tempfile
    from pathlib import Path

    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.resolve().parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2)
    os.replace(tmp, target)


def run(args) -> int:
    import os
    import time

    import torch
    from rich.console import Console
    from rich.table import Table

    from dynasparse_worker import corpora
    from dynasparse_worker.evaluation.plot import plot_quality
    from dynasparse_worker.evaluation.quality import at_bytes_skipped, evaluate
    from dynasparse_worker.gating import install_gates
    from dynasparse_worker.errors import UserError
    from dynasparse_worker.gating.artifact import calibration_for
    from dynasparse_worker.gating.calibrate import CalibrationSettings
    from dynasparse_worker.models import load_model

    started, cpu_started = time.monotonic(), time.process_time()
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    budgets = parse_budgets(args.budgets)
    _check_writable(args.json, "--json")
    _check_writable(args.plot, "--plot")
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    text = corpora.read_text_file(args.text) if args.text else corpora.fortunes_text()
    loaded = load_model(args.model, device=args.device)
    source = args.text or "the fortunes corpus"
    ids = corpora.token_sequences(loaded.tokenizer, text, args.sequences, args.seq_len, source)  # [N, T]
    gated = install_gates(loaded.model)
    if args.calibration is None:  # the default floor is known before calibrating: fail fast
        floor = CalibrationSettings().floor
        low = [b for b in budgets if b < floor - 1e-9]
        if low:
            raise UserError(f"budget {low[0]:g} is below the calibrated floor {floor:.2f}: "
                            f"pass budgets >= {floor:.2f}")
    calibration = calibration_for(loaded, gated, path=args.calibration, progress=not args.quiet)
    for budget in budgets:
        gated.check_budget(budget)
    dense_ppl, rows = evaluate(gated, calibration, ids, budgets, args.batch_size, progress=not args.quiet)
    elapsed = time.monotonic() - started

    table = Table(title=f"{loaded.name}: {args.sequences}×{args.seq_len} tokens of {source}; dense ppl {dense_ppl:.3f}")
    for column in ("method", "budget", "bytes skipped", "ppl", "ppl ratio", "KL", "top-1", "expected KL"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row.method, f"{row.budget:.2f}", f"{100 * row.bytes_skipped:.1f} %", f"{row.ppl:.3f}",
                      f"{row.ppl_ratio:.3f}", f"{row.kl:.4f}", f"{row.top1:.3f}",
                      "" if row.expected_kl is None else f"{row.expected_kl:.4f}")
    levels = at_bytes_skipped(rows)
    if levels:
        at_table = Table(title="at fixed bytes skipped (interpolated between the measured rows)")
        for column in ("method", "bytes skipped", "budget", "ppl ratio", "KL", "top-1", "KL / uniform's"):
            at_table.add_column(column, justify="right")
        for entry in levels:
            ratio = entry.get("kl_vs_uniform")
            at_table.add_row(entry["method"], f"{100 * entry['bytes_skipped']:.0f} %", f"{entry['budget']:.3f}",
                             f"{entry['ppl_ratio']:.3f}", f"{entry['kl']:.4f}", f"{entry['top1']:.3f}",
                             "" if ratio is None else f"{ratio:.2f}×")
    console = Console(width=max(120, Console().width))
    console.print(table)
    if levels:
        console.print(at_table)
    console.print("bytes skipped = measured fraction of the decoder blocks' linear-projection weight bytes "
                  f"not read (mean over tokens; embeddings and lm_head excluded). {elapsed:.0f} s.")
    payload = {"model": loaded.name, "fingerprint": loaded.fingerprint, "dense_ppl": dense_ppl,
               "sequences": args.sequences, "seq_len": args.seq_len, "text": source,
               "rows": [row.as_json() for row in rows], "at_bytes_skipped": levels,
               "wall_s": round(elapsed, 1), "cpu_s": round(time.process_time() - cpu_started, 1),
               "threads": torch.get_num_threads(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    if args.plot:
        plot_quality(rows, loaded.name, args.plot)
    if args.json:
        _write_json(args.json, payload)
    return 0
