"""`dynasparse bench --serve`: what clients get from `dynasparse serve`, next to what the engine can do.

In one run: (1) the engine alone, in this process, decodes `batch` sequences at each level and
budget (`benchmarks.engine_bench.bench_engine`: decode-only tok/s and ms per step), then frees the device;
(2) `dynasparse serve` starts as a subprocess on the same model (`--model shape:NAME` for random
weights of a real shape), with dev mTLS certificates so this benchmark can set the budget as the
operator does (target = floor = ceiling, so the fast loop holds it); (3) per budget and level,
`benchmarks.stream_client` keeps that many streamed `/v1/completions` open for `--seconds` and
measures served tok/s, TTFT and inter-token percentiles and errors. The headline is served tok/s
over the engine's at the same batch and budget. Writes JSON (with the server's step profile lines)
and a PNG. Runs on the CPU with the default model too, at small levels.
"""

from __future__ import annotations

import gc
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

FLOOR = -1.0  # the budget list's stand-in for "the calibrated floor"


def engine_alone(spec: str, device: Any, levels: list[int], budgets: list[float], prompt_len: int,
                 gen_len: int) -> tuple[dict, float, int]:
    """{budget: {batch: (tok/s, ms/step)}} of the engine alone, the floor it resolved, and the
    token ids a prompt may use (the tokenizer's and the model's vocabularies both hold them)."""
    import torch

    from dynasparse_worker.benchmarks.engine_bench import bench_engine, engine_config
    from dynasparse_worker.engine import Engine
    from dynasparse_worker.models import load_model
    from dynasparse_worker.server.engine_build import load_gated

    loaded = load_model(spec, device=device)
    gated = load_gated(loaded, "auto") if any(b != 1.0 for b in budgets) else None
    engine = Engine(gated or loaded.model, loaded.tokenizer,
                    engine_config(levels, prompt_len, gen_len))
    floor = engine.floor
    vocab = min(len(loaded.tokenizer), engine.runner.model.shape.vocab)
    rates: dict[float, dict[int, tuple[float, float]]] = {}
    for budget in budgets:
        value = floor if budget == FLOOR else budget
        if gated is not None:
            engine.apply_budget(value)
        rates[value] = {b: bench_engine(engine, b, prompt_len, gen_len, vocab) for b in levels}
    del engine, gated, loaded
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rates, floor, vocab


class ServerProcess:
    """`dynasparse serve` in a subprocess: its URL, its log lines, and an operator-like Session."""

    def __init__(self, args: list[str], tls_dir: Path | None):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "dynasparse", "serve", *args],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                     env=env)
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.tls_dir = tls_dir
        self.url = "http://127.0.0.1:" + self._wait(r"HTTP API on http://127\.0\.0\.1:(\d+)")
        self.control = ("127.0.0.1:" + self._wait(r"control endpoint \(mTLS\) on [\d.]+:(\d+)")
                        if tls_dir else None)
        self._session: Any = None

    def _pump(self) -> None:
        for line in self.proc.stderr:
            self.lines.append((time.time(), line.rstrip()))

    def _wait(self, pattern: str, timeout: float = 900) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, line in list(self.lines):
                found = re.search(pattern, line)
                if found:
                    return found.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError("dynasparse serve did not start:\n" +
                           "\n".join(line for _, line in self.lines[-30:]))

    def wait_ready(self, timeout: float = 900) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("dynasparse serve exited:\n" +
                                   "\n".join(line for _, line in self.lines[-30:]))
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("dynasparse serve did not get ready in time")

    def set_budget(self, budget: float, sequence: int) -> tuple[float, float]:
        """Hold the worker at `budget` (FLOOR: its calibrated floor) as the operator would;
        returns (applied budget, the worker's min budget) from its next report."""
        import grpc

        from dynasparse_proto import control_pb2, control_pb2_grpc

        if self._session is None:
            ca, key, crt = (self.tls_dir / n for n in ("ca.crt", "client.key", "client.crt"))
            creds = grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes(), crt.read_bytes())
            channel = grpc.secure_channel(self.control, creds,
                                          options=[("grpc.ssl_target_name_override", "localhost")])
            outbox: queue.Queue = queue.Queue()
            self._session = (outbox, control_pb2_grpc.ControlStub(channel).Session(
                iter(outbox.get, None)), channel)
        outbox, reports, _ = self._session
        if budget == FLOOR:
            budget = 1e-6  # the worker raises the floor to its calibrated one
        outbox.put(control_pb2.ControlMessage(epoch=1, sequence=sequence, target_budget=budget,
                                              floor=budget, ceiling=budget, sender="bench"))
        for report in reports:
            if report.applied_sequence >= sequence:
                return report.applied_budget, report.min_budget
        raise RuntimeError("the control stream ended before the budget was applied")

    def stop(self) -> None:
        if self._session is not None:
            self._session[0].put(None)
            self._session[2].close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def serve_args(spec: str, device: str, levels: list[int], max_seq_len: int, gated: bool,
               tls_dir: Path | None, engine_process: str = "auto") -> list[str]:
    args = ["--model", spec, "--device", device, "--port", "0", "--control-port", "0",
            "--max-batch-size", str(max(levels)), "--max-seq-len", str(max_seq_len),
            "--drain-grace", "5", "--log-level", "info", "--engine-process", engine_process]
    if gated:
        args += ["--calibration", "auto"]
    if tls_dir is not None:
        args += ["--tls-dir", str(tls_dir)]
    return args


def serve_bench(spec: str, device: Any, levels: list[int], budgets: list[float], seconds: float,
                prompt_len: int, gen_len: int, engine_process: str = "auto") -> dict:
    """The whole measurement (see module docstring); returns the JSON document. `engine_process`:
    the server's `--engine-process`; the JSON records it and the stage the server chose."""
    import random

    from dynasparse_worker.benchmarks.stream_client import run_level, summarize
    from dynasparse_worker.control.pki import make_dev_bundle, write_bundle

    started = time.time()
    engine_rates, floor, vocab = engine_alone(spec, device, levels, budgets, prompt_len, gen_len)
    gated = any(b != 1.0 for b in budgets)
    workdir = Path(tempfile.mkdtemp(prefix="dynasparse-serve-bench-"))
    tls_dir = write_bundle(make_dev_bundle(), workdir / "tls")[0].parent if gated else None
    server = ServerProcess(serve_args(spec, device.type, levels, prompt_len + gen_len + 16, gated,
                                      tls_dir, engine_process), tls_dir)
    rows = []
    try:
        server.wait_ready()
        ready_s = time.time() - started
        rng = random.Random(0)
        prompt = [rng.randrange(vocab // 8, vocab) for _ in range(prompt_len)]
        for sequence, budget in enumerate(budgets, start=1):
            value = floor if budget == FLOOR else budget
            applied = server.set_budget(budget, sequence)[0] if gated else 1.0
            for level in levels:
                t0 = time.time()
                records = run_level(server.url, level, seconds, prompt, gen_len)
                t1 = time.time()
                warm = min(seconds * 0.25, 3.0)  # the first wave's prefill burst is not steady state
                row = dict(budget=round(value, 4), applied_budget=applied, streams=level,
                           **summarize(records, t0 + warm, t0 + seconds))
                tps, ms = engine_rates[value][level]
                row.update(engine_tokens_per_s=tps, engine_ms_per_step=ms,
                           ratio=row["served_tokens_per_s"] / tps if tps else None,
                           itl_over_step=(row["inter_token_p50_ms"] / ms
                                          if row["inter_token_p50_ms"] and ms else None),
                           started=t0, ended=t1)
                rows.append(row)
                print(_row_text(row), flush=True)
    finally:
        server.stop()
    dense = {r["streams"]: r["served_tokens_per_s"] for r in rows if r["budget"] == 1.0}
    for row in rows:
        base = dense.get(row["streams"])
        row["served_speedup"] = row["served_tokens_per_s"] / base if base else None
    stages = [line for _, line in server.lines if "engine (own process)" in line
              or "engine (thread)" in line]
    return dict(model=spec, device=_device_name(device), levels=levels, seconds=seconds,
                prompt_len=prompt_len, gen_len=gen_len, floor=floor, server_ready_s=ready_s,
                engine_process=engine_process,
                engine_stage=("process" if "own process" in stages[0] else "thread") if stages
                else None,
                rows=rows, server_log=[f"{t:.3f} {line}" for t, line in server.lines
                                       if "engine loop" in line or "engine (" in line
                                       or "engine process" in line])


def _device_name(device: Any) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _row_text(row: dict) -> str:
    return (f"budget {row['budget']:<6} streams {row['streams']:>4}: served "
            f"{row['served_tokens_per_s']:>9.1f} tok/s, engine {row['engine_tokens_per_s']:>9.1f} "
            f"(ratio {_fmt(row['ratio'], '.2f')}), TTFT p50/p95 {_fmt(row['ttft_p50_ms'])}/"
            f"{_fmt(row['ttft_p95_ms'])} ms, ITL p50/p95 {_fmt(row['inter_token_p50_ms'], '.2f')}/"
            f"{_fmt(row['inter_token_p95_ms'], '.2f')} ms (engine step "
            f"{row['engine_ms_per_step']:.2f} ms), errors {row['errors']}/{row['requests']}")


def print_table(result: dict) -> None:
    print(f"{result['model']} on {result['device']}: served vs engine, {result['seconds']:g} s per "
          f"level, prompt {result['prompt_len']}, {result['gen_len']} tokens out, engine stage "
          f"{result.get('engine_stage')} (--engine-process {result.get('engine_process')})")
    for row in result["rows"]:
        print(_row_text(row))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for budget in sorted({r["budget"] for r in result["rows"]}, reverse=True):
        rows = [r for r in result["rows"] if r["budget"] == budget]
        x = [r["streams"] for r in rows]
        line, = left.plot(x, [r["served_tokens_per_s"] for r in rows], "o-",
                          label=f"served, budget {budget:g}")
        left.plot(x, [r["engine_tokens_per_s"] for r in rows], "--", color=line.get_color(),
                  label=f"engine alone, budget {budget:g}")
        right.plot(x, [r["ratio"] or 0 for r in rows], "o-", label=f"budget {budget:g}")
    left.set(xscale="log", yscale="log", xlabel="concurrent streams", ylabel="tok/s",
             title=f"{result['model']} on {result['device']}")
    right.axhline(0.9, color="k", lw=0.5)
    right.set(xscale="log", xlabel="concurrent streams", ylabel="served / engine", ylim=(0, 1.1))
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
