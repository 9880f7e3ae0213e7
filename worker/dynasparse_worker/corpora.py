"""Text that installs with the system: calibration (Python's `pydoc_data.topics`) and held-out evaluation
(Debian's `fortunes`, /usr/share/games/fortunes), tokenized into fixed-length sequences.

Nothing is copied into the repository. Called by `gating.calibrate` and `dynasparse eval`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dynasparse_worker.errors import UserError

FORTUNES_DIR = Path("/usr/share/games/fortunes")


def calibration_text() -> str:
    """Python's own documentation topics, in a stable order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def fortunes_text(directory: Path = FORTUNES_DIR) -> str:
    """All fortune files (not the .dat/.u8 indexes), '%' separators removed, in a stable order."""
    if not directory.is_dir():
        raise UserError(
            f"{directory} is missing: install Debian's `fortunes` package (scripts/setup.sh does) "
            "or pass --text PATH"
        )
    parts = []
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix not in (".dat", ".u8") and not path.is_symlink():
            text = path.read_text(encoding="utf-8", errors="replace")
            parts.append("\n".join(line for line in text.splitlines() if line.strip() != "%"))
    return "\n\n".join(parts)


def read_text_file(path: str) -> str:
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"text file {path} does not exist: pass --text with a readable plain-text file")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text: pass a plain-text file") from exc


def leading_token(tokenizer) -> int | None:
    """The token a sequence must start with for this model: BOS where the tokenizer adds one to its
    inputs (Gemma does, and its predictions collapse without it), else None (SmolLM2 adds none)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    probe = tokenizer("a", add_special_tokens=True).input_ids
    return int(bos) if probe and probe[0] == bos else None


def token_sequences(tokenizer, text: str, sequences: int, seq_len: int, source: str,
                    offset: int = 0) -> torch.Tensor:
    """`sequences` windows of `seq_len` tokens spread evenly over the text (after skipping `offset`
    windows' worth of positions), each starting the way the model expects its inputs to start (BOS
    where the tokenizer adds one, then `seq_len - 1` text tokens). Calibration and evaluation both cut
    their windows here. → [N, T] int64. UserError if the text is too short."""
    if sequences < 1 or seq_len < 2:
        raise UserError("--sequences must be >= 1 and --seq-len >= 2")
    lead = leading_token(tokenizer)
    body = seq_len - (lead is not None)  # text tokens per window
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0] if text.strip() else None
    need = (sequences + offset) * body
    if ids is None or ids.numel() < need:
        have = 0 if ids is None else ids.numel()
        raise UserError(
            f"{source} has {have} tokens but {sequences} sequences of {seq_len} need {need}: "
            "pass a longer text or fewer --sequences / a shorter --seq-len"
        )
    windows = ids.numel() // body  # non-overlapping windows available
    chosen = torch.linspace(offset, windows - 1, sequences).round().long()  # [N] spread evenly
    starts = chosen * body  # [N]
    out = torch.stack([ids[s : s + body] for s in starts.tolist()])  # [N, body]
    if lead is not None:
        out = torch.cat([torch.full((sequences, 1), lead, dtype=out.dtype), out], 1)  # [N, T]
    return out
