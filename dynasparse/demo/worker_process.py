"""Starts and stops the demo's worker: `dynasparse serve` as a child process on loopback.

Called by demo/run.py. The worker gets a development CA and certificates (mTLS is the only way its
control port serves), free ports, and a log file; `start` returns once /readyz says ready.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


class DemoError(Exception):
    """Something the person running the demo can act on."""

    user_error = True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    http_url: str
    control_port: int
    log_path: Path

    def stop(self, grace_s: float = 20.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_worker(model: str, tls_dir: Path, log_path: Path, extra_args: list[str],
                 ready_timeout_s: float = 900.0, on_wait=None) -> WorkerProcess:
    """Runs `dynasparse serve` and waits for readiness; the log says what went wrong otherwise."""
    port, control_port = free_port(), free_port()
    args = [sys.executable, "-m", "dynasparse", "serve", "--model", model, "--host", "127.0.0.1",
            "--port", str(port), "--control-port", str(control_port), "--tls-dir", str(tls_dir),
            "--pod-name", "demo-worker", *extra_args]
    log = open(log_path, "w")  # noqa: SIM115 - the child keeps writing to it
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
                               start_new_session=True)
    worker = WorkerProcess(process, f"http://127.0.0.1:{port}", control_port, log_path)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise DemoError(f"the worker exited with code {process.returncode}; its log "
                            f"({log_path}) ends with: {' | '.join(tail)}")
        try:
            if httpx.get(worker.http_url + "/readyz", timeout=1.0).status_code == 200:
                return worker
        except httpx.HTTPError:
            pass
        if on_wait:
            on_wait(time.monotonic() - (deadline - ready_timeout_s))
        time.sleep(0.5)
    worker.stop()
    raise DemoError(f"the worker was not ready after {ready_timeout_s:.0f} s; see {log_path}")
