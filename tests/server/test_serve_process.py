"""`dynasparse serve` as a real process: it starts on loopback with defaults, and SIGTERM drains it
(readiness false, new requests refused, admitted ones finished) before it exits with code 0."""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serve_process import serve_process

pytestmark = pytest.mark.slow


def _running(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(r"^dynasparse_running_sequences (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("engine_process", ["off", "on"])
def test_sigterm_drains_admitted_requests_and_exits_cleanly(engine_process):
    with serve_process("--control-port", "0", "--max-seq-len", "256", "--kv-tokens", "1024",
                       "--max-batch-size", "2", "--drain-grace", "180",  # generous: CI is slow
                       "--engine-process", engine_process,
                       env={"POD_NAME": "pod-under-test"}) as served:
        proc, url, lines = served.proc, served.url, served.lines
        deadline = time.monotonic() + 180
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
        engines = _engine_process_ids(lines)
        assert len(engines) == (engine_process == "on")
        for pid in engines:
            assert not _exists(pid), "the engine process stopped with the server"


def _engine_process_ids(lines: list[str]) -> list[int]:
    return [int(m.group(1)) for line in lines
            if (m := re.search(r"engine process (\d+) has loaded", line))]


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("engine_process", ["off", "on"])
def test_sigterm_while_the_model_loads_exits_without_waiting_for_the_load(engine_process):
    with serve_process("--control-port", "0", "--max-seq-len", "256", "--kv-tokens", "1024",
                       "--engine-process", engine_process, ready=False) as served:
        assert httpx.get(f"{served.url}/readyz").json() == {"ready": False,
                                                            "reason": "loading the model"}
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=15) == 0
        assert any("stopped while the model was still loading" in line for line in served.lines)
