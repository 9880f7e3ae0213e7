"""One PNG of quality against measured bytes skipped: dynasparse vs the uniform baseline.

Left: KL(dense‖sparse) per token; right: perplexity ratio (log scale). Written atomically.
Called by `commands/eval.py`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def plot_quality(rows, model_name: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for method, style in (("dynasparse", "o-"), ("uniform", "s--")):
        mine = sorted((r for r in rows if r.method == method), key=lambda r: r.bytes_skipped)
        xs = [100 * r.bytes_skipped for r in mine]
        left.plot(xs, [r.kl for r in mine], style, label=method)
        right.plot(xs, [r.ppl_ratio for r in mine], style, label=method)
    left.set_ylabel("KL(dense‖sparse) per token")
    right.set_ylabel("perplexity ratio (sparse / dense)")
    right.set_yscale("log")
    for axis in (left, right):
        axis.set_xlabel("decode weight bytes skipped (%)")
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(f"{model_name}: quality vs bytes skipped")
    fig.tight_layout()
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent or ".")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, target)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
