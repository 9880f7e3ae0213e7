"""The engine loop as clients and the operator see it: admission sized from the KV slots, stop
strings and the budget applied through the engine, a drain that runs out of grace, a dead engine
thread, and one request that cannot break the others."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from dynasparse_worker.engine.types import TokenEvent
from dynasparse_worker.errors import UserError
from dynasparse_worker.gating import install_gates
from dynasparse_worker.server.engine_loop import EventQueue
from dynasparse_worker.server.runtime import ServeSettings, WorkerRuntime
from test_gated_worker import two_level_table

pytestmark = pytest.mark.slow


def _stream_lines(url: str, body: dict, lines: list[str], first: threading.Event) -> None:
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True},
                      timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                lines.append(line[6:])
                first.set()


def _gated_copy(loaded_model):
    model = copy.deepcopy(loaded_model.model)
    gated = install_gates(model)
    gated.attach(two_level_table(gated))  # levels 1.0 and 0.5: the floor is 0.5
    return dataclasses.replace(loaded_model, model=model), gated


def test_events_that_piled_up_reach_a_slow_reader_as_one():
    async def scenario() -> TokenEvent:
        q = EventQueue()
        for i, text in enumerate(["a", "b", "c"]):
            q.put_nowait(TokenEvent("r", [i], text, finished=i == 2, finish_reason="length" if i == 2
                                    else None, completion_tokens=i + 1))
        return await q.get()

    ev = asyncio.run(scenario())
    assert (ev.token_ids, ev.text, ev.finished, ev.finish_reason, ev.completion_tokens) == \
        ([0, 1, 2], "abc", True, "length", 3)


def test_at_ten_times_capacity_the_excess_gets_a_fast_429_and_the_admitted_finish(start_worker):
    with start_worker(max_batch_size=2) as w:  # 2 KV slots, so 2 more may wait
        assert w.runtime.engine_loop.max_queue == 2
        body = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0,
                "ignore_eos": True}

        def post():
            started = time.monotonic()
            r = httpx.post(f"{w.url}/v1/completions", json=body, timeout=120)
            return r.status_code, time.monotonic() - started

        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(lambda _: post(), range(20)))
    codes = [c for c, _ in results]
    assert set(codes) <= {200, 429} and codes.count(200) >= 4
    assert codes.count(429) >= 10
    assert max(s for c, s in results if c == 429) < 2.0, "refusals are immediate"


def test_a_stop_string_found_by_the_output_stage_ends_the_request(worker):
    plain = httpx.post(f"{worker.url}/v1/completions", timeout=60, json={
        "prompt": "The capital of France is", "max_tokens": 12, "temperature": 0}).json()
    text = plain["choices"][0]["text"]
    stop = text.strip().split()[1] if len(text.split()) > 1 else text.strip()[:2]
    cut = httpx.post(f"{worker.url}/v1/completions", timeout=60, json={
        "prompt": "The capital of France is", "max_tokens": 12, "temperature": 0,
        "stop": [stop]}).json()
    assert cut["choices"][0]["text"] == text[:text.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert worker.runtime.engine_loop.in_flight == 0


def test_an_unusable_seed_fails_alone_while_other_streams_complete(worker):
    body = {"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0, "ignore_eos": True}
    expected = httpx.post(f"{worker.url}/v1/completions", json=body, timeout=60).json()
    with ThreadPoolExecutor(4) as pool:
        good = [pool.submit(httpx.post, f"{worker.url}/v1/completions", json=body, timeout=60)
                for _ in range(3)]
        bad = pool.submit(httpx.post, f"{worker.url}/v1/completions", timeout=60,
                          json={**body, "temperature": 1.0, "seed": 2 ** 70})
        results = [f.result() for f in good]
    assert [r.json()["choices"][0]["text"] for r in results] == \
        [expected["choices"][0]["text"]] * 3
    assert bad.result().status_code != 200


def test_the_initial_budget_is_served_once_the_calibrated_model_loaded(loaded_model, start_worker):
    loaded, gated = _gated_copy(loaded_model)
    with start_worker(loaded=loaded, gated=gated, initial_budget=0.6,
                      uncalibrated_min_budget=1.0) as w:
        snap = w.runtime.supervisor.snapshot()
        assert snap.applied_budget == pytest.approx(0.6)
        assert snap.control.floor == pytest.approx(0.5) and snap.control.ceiling == 1.0
        assert float(gated.state.budget) == pytest.approx(0.6)
        assert w.runtime.actuator.applied.plan.variants[0][0], "the runner got the gated plan"


def test_an_initial_budget_below_the_calibrated_floor_is_refused(loaded_model):
    loaded, gated = _gated_copy(loaded_model)
    settings = ServeSettings(port=0, control_port=0, max_batch_size=2, max_seq_len=256,
                             kv_tokens=512, initial_budget=0.3)
    runtime = WorkerRuntime(settings, loaded=loaded, gated=gated)
    with pytest.raises(UserError, match="below the calibrated floor"):
        asyncio.run(runtime.run())


def test_healthz_fails_once_the_engine_thread_died(start_worker):
    with start_worker() as w:
        assert httpx.get(f"{w.url}/healthz").status_code == 200
        engine = w.runtime.engine_loop.engine

        def broken() -> bool:  # a fault outside any step: the thread ends
            raise RuntimeError("injected fault")

        engine.has_work = broken
        deadline = time.monotonic() + 10
        while w.runtime.engine_loop.alive and time.monotonic() < deadline:
            time.sleep(0.02)
        r = httpx.get(f"{w.url}/healthz")
        assert r.status_code == 503 and "engine" in r.json()["status"]


def test_streams_cut_by_the_end_of_the_drain_grace_get_an_error_event_and_the_worker_exits(
        start_worker):
    with start_worker(drain_grace_s=1.0) as w:
        lines: list[str] = []
        first = threading.Event()
        body = {"prompt": "Once upon a time", "max_tokens": 200, "temperature": 0,
                "ignore_eos": True}
        reader = threading.Thread(target=_stream_lines, args=(w.url, body, lines, first))
        reader.start()
        assert first.wait(60)
        started = time.monotonic()
        w.runtime.terminate("test")
        w.thread.join(15)
        exited_after = time.monotonic() - started
        reader.join(10)
    assert not w.thread.is_alive() and exited_after < 1.0 + 3.0
    assert lines[-1] == "[DONE]"
    error = json.loads(lines[-2])
    assert "drain grace" in error["error"]["message"]
