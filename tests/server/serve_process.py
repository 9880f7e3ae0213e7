"""`dynasparse serve` started as a real child process for tests: one way to start it, find its HTTP
port in its log, wait until it is ready, and make sure it is gone afterwards."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import httpx

START_TIMEOUT_S = 180  # the model loads and calibrates on a shared 2-core machine


@dataclass
class ServeProcess:
    proc: subprocess.Popen
    lines: list[str] = field(default_factory=list)  # its log so far (stderr)
    url: str = ""

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while httpx.get(f"{self.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.2)


def _wait_for_port(proc: subprocess.Popen, lines: list[str]) -> int:
    def pump() -> None:
        for line in proc.stderr:
            lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in list(lines):
            match = re.search(r"HTTP API on http://127\.0\.0\.1:(\d+)", line)
            if match:
                return int(match.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError("serve did not start:\n" + "".join(lines))


@contextlib.contextmanager
def serve_process(*args: str, env: dict[str, str] | None = None, ready: bool = True
                  ) -> Iterator[ServeProcess]:
    """`dynasparse serve --port 0 <args>` with its URL known (and ready, unless `ready=False`);
    terminated (killed if it lingers) when the block ends."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "dynasparse.cli", "serve", "--port", "0", *args],
                            env=full_env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    served = ServeProcess(proc)
    try:
        served.url = f"http://127.0.0.1:{_wait_for_port(proc, served.lines)}"
        if ready:
            served.wait_ready()
        yield served
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
