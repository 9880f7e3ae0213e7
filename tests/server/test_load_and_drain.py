"""Under load and at the end of life: 429 beyond the queue, the fast loop tightening under a queue
spike through the real server, and a drain (operator message) that loses no admitted request and
leaves the worker up, idle and not ready, until it is terminated."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dynasparse_proto import control_pb2

pytestmark = pytest.mark.slow
AUTH = {"Authorization": "Bearer sekret"}


def burst(url: str, n: int, max_tokens: int = 12, headers=None) -> list[httpx.Response]:
    body = {"prompt": "Count slowly:", "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True}
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: httpx.post(f"{url}/v1/completions", json=body,
                                                  headers=headers, timeout=120), range(n)))


def test_requests_beyond_the_queue_get_429_with_retry_after(tight_worker):
    responses = burst(tight_worker.url, 10, headers=AUTH)
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 429} and codes.count(200) >= 3
    rejected = next(r for r in responses if r.status_code == 429)
    assert rejected.headers["Retry-After"] == "1"
    assert rejected.json()["error"]["type"] == "rate_limit_error"
    for r in responses:
        if r.status_code == 200:
            assert r.json()["usage"]["completion_tokens"] == 12  # admitted ones all finish


def test_fast_loop_tightens_under_a_queue_spike_and_says_why(tight_worker, Session):
    session = Session(tight_worker.stub())
    try:
        session.send(epoch=int(time.time()), sequence=1, target_budget=0.9, floor=0.4,
                     ceiling=1.0, report_interval_s=0.05)
        session.next_report(lambda r: r.applied_budget == pytest.approx(0.9))
        loader = threading.Thread(target=burst, args=(tight_worker.url, 4), kwargs={"headers": AUTH})
        loader.start()
        tightened = session.next_report(lambda r: r.last_decision.source == "fast-loop", timeout=30)
        loader.join()
    finally:
        session.close()
    d = tightened.last_decision
    assert d.to_budget < d.from_budget and 0.4 <= tightened.applied_budget < 0.9
    assert "queue depth" in d.reason and "bounds 0.40..1.00" in d.reason
    status = tight_worker.stub().GetStatus(control_pb2.StatusRequest(), timeout=5)
    assert status.applied_budget >= 0.4  # pressure that lasts tightens further, never below the floor
    assert tight_worker.runtime.actuator.budget == pytest.approx(status.applied_budget)
    metrics = httpx.get(f"{tight_worker.url}/metrics").text
    assert 'dynasparse_budget_decisions_total{source="fast-loop"}' in metrics


def test_an_operator_drain_finishes_every_admitted_request_then_stays_up_idle_until_terminated(
        start_worker, Session):
    with start_worker(max_batch_size=2, drain_grace_s=60) as w:
        body = {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0,
                "ignore_eos": True}
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(httpx.post, f"{w.url}/v1/completions", json=body, timeout=120)
                       for _ in range(4)]
            deadline = time.monotonic() + 30
            while w.runtime.engine_loop.in_flight < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert w.runtime.engine_loop.in_flight == 4

            session = Session(w.stub())
            session.send(epoch=1, sequence=1, mode=control_pb2.MODE_DRAIN, floor=0.5,
                         reason="node n3 has karpenter.sh/disrupted")
            report = session.next_report(lambda r: r.mode == control_pb2.MODE_DRAIN)
            assert not report.ready and report.applied_budget == pytest.approx(0.5)
            assert httpx.get(f"{w.url}/readyz").status_code == 503
            health = health_pb2_grpc.HealthStub(w.channel()).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            refused = httpx.post(f"{w.url}/v1/completions", json=body, timeout=10)
            assert refused.status_code == 503 and "draining" in refused.json()["error"]["message"]
            results = [f.result() for f in futures]
            session.close()
        assert [r.status_code for r in results] == [200] * 4
        assert all(r.json()["usage"]["completion_tokens"] == 24 for r in results)
        # drained, the process stays: an exit would have the kubelet restart it on the doomed node
        assert w.runtime.drained.wait(30) and w.runtime.drained_clean
        w.thread.join(1.0)
        assert w.thread.is_alive()
        assert httpx.get(f"{w.url}/healthz").status_code == 200  # liveness holds: no restart
        assert httpx.get(f"{w.url}/readyz").json() == {"ready": False, "reason": "draining"}
        terminated = time.monotonic()
        assert not w.runtime.terminate()  # SIGTERM (the pod's deletion): already drained...
        w.thread.join(10)
        assert not w.thread.is_alive() and w.exit_code == 0  # ...so it exits at once
        assert time.monotonic() - terminated < 5.0


def test_a_draining_worker_serves_through_its_deregistration_delay_then_refuses(start_worker, Session):
    """Clients routed here before the endpoints dropped the pod are served, not refused: readiness
    turns false at once, admissions end only after the delay; what was admitted still finishes."""
    short = {"prompt": "Hello", "max_tokens": 2, "temperature": 0}
    long = {"prompt": "Hello", "max_tokens": 160, "temperature": 0, "ignore_eos": True}
    with start_worker(deregister_s=3.0, drain_grace_s=60) as w:
        session = Session(w.stub())
        session.send(epoch=1, sequence=1, mode=control_pb2.MODE_DRAIN, floor=0.5, reason="spot notice")
        session.next_report(lambda r: r.mode == control_pb2.MODE_DRAIN)
        drain_seen = time.monotonic()
        assert httpx.get(f"{w.url}/readyz").json() == {"ready": False, "reason": "draining"}
        with ThreadPoolExecutor(1) as pool:
            # admitted inside the window; it also keeps the worker up (refusing) after the window
            running = pool.submit(httpx.post, f"{w.url}/v1/completions", json=long, timeout=120)
            inside = httpx.post(f"{w.url}/v1/completions", json=short, timeout=60)
            assert inside.status_code == 200, inside.text
            assert time.monotonic() - drain_seen < 3.0  # admitted while the window was open
            deadline = time.monotonic() + 20
            refused = inside
            while refused.status_code == 200 and time.monotonic() < deadline and not running.done():
                time.sleep(0.2)
                refused = httpx.post(f"{w.url}/v1/completions", json=short, timeout=60)
            assert refused.status_code == 503 and "draining" in refused.json()["error"]["message"]
            assert refused.headers["Retry-After"] == "1"
            assert time.monotonic() - drain_seen >= 2.5
            finished = running.result()
        session.close()
        assert finished.status_code == 200 and finished.json()["usage"]["completion_tokens"] == 160
        assert w.runtime.drained.wait(30) and w.runtime.drained_clean


def test_a_sigterm_during_an_operator_drain_exits_once_the_admitted_requests_finish(
        start_worker, Session):
    body = {"prompt": "Once upon a time", "max_tokens": 48, "temperature": 0, "ignore_eos": True}
    with start_worker(max_batch_size=2, drain_grace_s=60) as w:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(httpx.post, f"{w.url}/v1/completions", json=body, timeout=120)
            deadline = time.monotonic() + 30
            while w.runtime.engine_loop.in_flight < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            session = Session(w.stub())
            session.send(epoch=1, sequence=1, mode=control_pb2.MODE_DRAIN, floor=0.5,
                         reason="node n3 has karpenter.sh/disrupted")
            session.next_report(lambda r: r.mode == control_pb2.MODE_DRAIN)
            w.runtime.terminate()  # the node's shutdown reaches the pod mid-drain
            finished = running.result()
            session.close()
        assert finished.status_code == 200 and finished.json()["usage"]["completion_tokens"] == 48
        w.thread.join(30)
        assert not w.thread.is_alive() and w.exit_code == 0 and w.runtime.drained_clean
