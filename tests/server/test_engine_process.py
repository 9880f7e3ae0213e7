"""The engine in a child process of its own (`--engine-process on`): the same answers as the
engine thread, cancellations, stop strings and budgets reach the child, and a child that dies or
cannot load is reported, not hung on. Real default model on the CPU, real HTTP servers, real
clients; each worker here starts its own engine process."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
import torch

from dynasparse_worker.gating import install_gates
from dynasparse_worker.gating.artifact import save_artifact
from dynasparse_worker.gating.calibrate import Calibration, CalibrationSettings
from tests.server.test_gated_worker import two_level_table

pytestmark = pytest.mark.slow

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def start_process_worker(tls_dir):
    """Start a worker whose engine process loads the default model itself."""
    from tests.server.conftest import running_worker

    def start(**overrides):
        return running_worker(None, tls_dir, engine_process="on", **overrides)

    return start


@pytest.fixture(scope="module")
def process_worker(start_process_worker):
    with start_process_worker() as w:
        yield w


def _stream(url: str, body: dict) -> tuple[str, list[dict]]:
    """(text, every SSE data object) of a streamed completion."""
    text, objects = "", []
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True},
                      timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                obj = json.loads(line[6:])
                objects.append(obj)
                for choice in obj.get("choices", []):
                    text += choice.get("text") or ""
    return text, objects


def _wait(predicate, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def test_the_engine_runs_in_another_process(process_worker):
    stage = process_worker.runtime.engine_loop.stage
    assert stage.process.pid != os.getpid() and stage.process.is_alive()
    assert process_worker.runtime.engine_loop.engine is None


def test_streamed_and_whole_completions_give_the_thread_modes_greedy_text(process_worker, worker):
    body = {"prompt": PROMPT, "max_tokens": 16, "temperature": 0, "ignore_eos": True}
    threaded = httpx.post(f"{worker.url}/v1/completions", json=body, timeout=60).json()
    whole = httpx.post(f"{process_worker.url}/v1/completions", json=body, timeout=60).json()
    streamed, _ = _stream(process_worker.url, body)
    expected = threaded["choices"][0]["text"]
    assert expected and whole["choices"][0]["text"] == expected and streamed == expected
    assert whole["usage"]["completion_tokens"] == 16


def test_a_client_disconnect_frees_the_sequences_kv_slot_in_the_child(process_worker):
    loop = process_worker.runtime.engine_loop
    with httpx.stream("POST", f"{process_worker.url}/v1/completions", timeout=60,
                      json={"prompt": "Tell me a long story.", "max_tokens": 200,
                            "temperature": 0, "ignore_eos": True, "stream": True}) as r:
        lines = r.iter_lines()
        assert any(next(lines).startswith("data: ") for _ in range(6))
        assert loop.in_flight == 1
    # the child's own stats (sent with every step) say the sequence left the batch
    assert _wait(lambda: loop.in_flight == 0
                 and process_worker.runtime.supervisor.snapshot().running == 0)
    assert process_worker.runtime.supervisor.snapshot().kv_usage == 0.0
    r = httpx.post(f"{process_worker.url}/v1/completions", timeout=60,
                   json={"prompt": PROMPT, "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0


def test_a_stop_string_ends_the_stream(process_worker):
    body = {"prompt": "The capital of France is", "max_tokens": 12, "temperature": 0}
    text = httpx.post(f"{process_worker.url}/v1/completions", json=body, timeout=60
                      ).json()["choices"][0]["text"]
    stop = text.strip().split()[1]
    cut, objects = _stream(process_worker.url, {**body, "stop": [stop]})
    assert cut == text[:text.index(stop)]
    assert [c["finish_reason"] for o in objects for c in o["choices"]][-1] == "stop"
    assert _wait(lambda: process_worker.runtime.engine_loop.in_flight == 0)


@pytest.fixture(scope="module")
def two_level_calibration(loaded_model, tmp_path_factory):
    """A calibration file of two levels (1.0 and 0.5) for the default model, no calibration run."""
    gated = install_gates(copy.deepcopy(loaded_model.model))
    table = two_level_table(gated)
    calibration = Calibration(table, torch.zeros(1, gated.state.num_layers, 4),
                              CalibrationSettings(), loaded_model.fingerprint, loaded_model.name)
    return save_artifact(calibration, tmp_path_factory.mktemp("cal") / "two-level.safetensors")


def test_the_initial_and_the_operators_budgets_reach_the_child_and_come_back_applied(
        start_process_worker, two_level_calibration, Session):
    with start_process_worker(calibration=str(two_level_calibration),
                      initial_budget=0.7, uncalibrated_min_budget=1.0) as w:
        actuator = w.runtime.actuator
        assert _wait(lambda: actuator.budget == pytest.approx(0.7)), "--budget applied once loaded"
        assert w.runtime.supervisor.expected_loss == pytest.approx(0.24, abs=1e-4)
        session = Session(w.stub())
        try:
            session.send(epoch=1, sequence=1, target_budget=0.6, floor=0.2, ceiling=1.0)
            report = session.next_report(lambda r: r.applied_sequence == 1)
        finally:
            session.close()
        assert report.min_budget == pytest.approx(0.5) and report.floor == pytest.approx(0.5)
        assert report.applied_budget == pytest.approx(0.6)
        assert actuator.budget == pytest.approx(0.6), "the child confirmed what it applied"
        assert report.expected_quality_loss == pytest.approx(0.32, abs=1e-4)  # from the child
        r = httpx.post(f"{w.url}/v1/completions", timeout=60,
                       json={"prompt": PROMPT, "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0


def test_killing_the_child_ends_open_streams_with_an_error_and_fails_healthz(
        start_process_worker):
    with start_process_worker() as w:
        stage = w.runtime.engine_loop.stage
        assert httpx.get(f"{w.url}/healthz").status_code == 200
        objects = []
        with httpx.stream("POST", f"{w.url}/v1/completions", timeout=60,
                          json={"prompt": "Tell me a long story.", "max_tokens": 200,
                                "temperature": 0, "ignore_eos": True, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    objects.append(json.loads(line[6:]))
                    if len(objects) == 2:
                        os.kill(stage.process.pid, signal.SIGKILL)
        assert "error" in objects[-1] and "engine stopped" in objects[-1]["error"]["message"]
        assert len(objects) < 100
        r = httpx.get(f"{w.url}/healthz")
        assert r.status_code == 503 and "engine" in r.json()["status"]
        began = time.monotonic()
    assert not w.thread.is_alive() and time.monotonic() - began < 15, "shutdown does not hang"


def test_a_child_that_cannot_load_fails_serve_with_its_reason(tmp_path):
    missing = tmp_path / "no-such-model"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-m", "dynasparse.cli", "serve", "--port", "0",
                           "--control-port", "0", "--model", str(missing),
                           "--engine-process", "on"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "engine process could not load the model" in done.stderr
    assert str(missing) in done.stderr
