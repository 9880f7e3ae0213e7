"""`dynasparse serve` as a real process: it starts on loopback with defaults, and SIGTERM drains it
(readiness false, new requests refused, admitted ones finished) before it exits with code 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = pytest.mark.slow


def _wait_for_port(proc: subprocess.Popen, lines: list[str]) -> int:
    def pump() -> None:
        for line in proc.stderr:
            lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for line in list(lines):
            match = re.search(r"HTTP API on http://127\.0\.0\.1:(\d+)", line)
            if match:
                return int(match.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError("serve did not start:\n" + "".join(lines))


def _running(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(r"^dynasparse_running_sequences (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_sigterm_drains_admitted_requests_and_exits_cleanly(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "POD_NAME": "pod-under-test"}
    cmd = [sys.executable, "-m", "dynasparse.cli", "serve", "--port", "0", "--control-port", "0",
           "--max-seq-len", "256", "--kv-tokens", "1024", "--max-batch-size", "2",
           "--drain-grace", "180"]  # generous: CI machines are shared and slow
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    lines: list[str] = []
    try:
        url = f"http://127.0.0.1:{_wait_for_port(proc, lines)}"
        deadline = time.monotonic() + 180
        while httpx.get(f"{url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        body = {"prompt": "Once upon a time", "max_tokens": 10, "temperature": 0, "ignore_eos": True}
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(httpx.post, f"{url}/v1/completions", json=body, timeout=240)
                       for _ in range(2)]
            while _running(url) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            assert httpx.get(f"{url}/readyz").json() == {"ready": False, "reason": "draining"}
            assert httpx.post(f"{url}/v1/completions", json=body).status_code == 503
            results = [f.result() for f in futures]
        assert [r.status_code for r in results] == [200, 200], "".join(lines[-40:])
        assert [r.json()["usage"]["completion_tokens"] for r in results] == [10, 10]
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_while_the_model_loads_exits_without_waiting_for_the_load():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "dynasparse.cli", "serve", "--port", "0",
                             "--control-port", "0", "--max-seq-len", "256", "--kv-tokens", "1024"],
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    try:
        url = f"http://127.0.0.1:{_wait_for_port(proc, lines)}"
        assert httpx.get(f"{url}/readyz").json() == {"ready": False, "reason": "loading the model"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert any("stopped while the model was still loading" in line for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
