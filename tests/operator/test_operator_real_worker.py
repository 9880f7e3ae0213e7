"""The operator's control loop against a real `dynasparse serve` process (the embedded tiny model).

Certificates come from the operator's own PKI (the worker verifies our client certificate, we verify
its name `<model>.<namespace>.svc`); real completions over HTTP produce the latency samples.
Marked slow: the worker loads the model on the CPU first (~45 s on 2 cores).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from dynasparse_operator import manifests, pki
from test_operator_control_stream import OWNER, Recorder, make_loop, wait_for

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def worker(tmp_path):
    ca = pki.make_ca()
    leaf = pki.issue(ca, "worker", server=True, dns_names=manifests.worker_dns_names(OWNER))
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "ca.crt").write_bytes(ca.cert_pem)
    (tls / "server.crt").write_bytes(leaf.cert_pem)
    (tls / "server.key").write_bytes(leaf.key_pem)
    http, control = free_port(), free_port()
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynasparse", "serve", "--host", "127.0.0.1", "--port", str(http),
         "--control-port", str(control), "--tls-dir", str(tls), "--pod-name", "w0",
         "--report-interval", "0.2", "--max-seq-len", "256", "--kv-tokens", "2048"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="2"))
    deadline = time.monotonic() + 240
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{http}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("worker did not become ready:\n" + (tmp_path / "worker.log").read_text()[-3000:])
        time.sleep(1)
    yield ca, http, control
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


async def test_real_worker_acks_updates_and_a_violation_is_decided_within_a_second(worker):
    """Without a calibration the worker offers only budget 1.0: the operator must respect that floor."""
    ca, http, control = worker
    statuses, events = [], []
    loop: Recorder = make_loop(control, ca, statuses, events)
    loop.body["spec"] = {**loop.body["spec"], "slo": {"ttftP95Ms": 1}}  # every request violates
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop.is_set))
    try:
        loop.runtime.wake.set()
        await wait_for(lambda: "w0" in loop.reports and loop.sequence_sent > 0, timeout=10.0)
        await wait_for(lambda: loop.reports["w0"].min_budget == 1.0, timeout=5.0)
        assert loop.pool.streams["w0"].connected
        await wait_for(lambda: loop.decision.floor == 1.0, timeout=2.0)  # the worker's calibration bounds it
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http}", timeout=120) as client:
            for _ in range(6):
                r = await client.post("/v1/completions", json={"model": "default", "prompt": "Hello",
                                                               "max_tokens": 2})
                assert r.status_code == 200
        await wait_for(lambda: loop.violating_at is not None, timeout=10.0)
        await wait_for(lambda: loop.violation_decided_at is not None)
        assert loop.violation_decided_at - loop.violating_at < 1.0, \
            loop.violation_decided_at - loop.violating_at
        assert "> SLO 1 ms" in loop.decision.reason and "at its floor" in loop.decision.reason
        assert loop.reports["w0"].applied_budget == 1.0
        await wait_for(lambda: any(c["reason"] == "AtQualityFloor" for s in statuses
                                   for c in s.get("conditions", ()) if c["type"] == "Degraded"),
                       timeout=5.0)  # the first patch persists the epoch alone
    finally:
        stop.set()
        loop.runtime.wake.set()
        await asyncio.wait_for(task, 5)
