"""Kubernetes calls inside the control step are bounded, and a failed scale is retried.

A real HTTP server on 127.0.0.1 stands in for a stuck API server: it accepts connections and
holds them without answering (or answers, once told to). The operator's real `Kube` talks to it
through the official client; the control loop is the real `ControlLoop` with that client's
`scale_workers`, so a scale call that hangs is retried at the next step instead of being lost.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kubernetes
import pytest

from dynasparse_operator import manifests, pki
from dynasparse_operator.daemon import ControlLoop, LoopDeps, ModelRuntime
from dynasparse_operator.grpc_client import ClientTls
from dynasparse_operator.kube import Kube, KubeTimeout, single_attempt
from dynasparse_operator.settings import OperatorSettings

TIMEOUT_S = 0.3


class StuckApiServer:
    """Holds every request unanswered until `answering` is set; then answers PATCHes with 200."""

    def __init__(self) -> None:
        self.answering = threading.Event()
        self.released = threading.Event()
        self.patches: list[tuple[str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _hold_or_answer(self, body: dict) -> None:
                if not outer.answering.is_set():
                    outer.released.wait(30)  # never answers while the test runs
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._hold_or_answer({"apiVersion": "v1", "kind": "PodList", "items": []})

            def do_POST(self):
                outer.released.wait(30)  # creates are never answered here

            def do_PATCH(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if outer.answering.is_set():
                    outer.patches.append((self.path, body))
                self._hold_or_answer({"apiVersion": "apps/v1", "kind": "Deployment",
                                      "metadata": {"name": "chat-worker"},
                                      "spec": {"selector": {"matchLabels": {}}, "template": {}}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kube(self) -> Kube:
        config = kubernetes.client.Configuration()
        config.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return Kube(kubernetes.client.ApiClient(single_attempt(config)), timeout_s=TIMEOUT_S)

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api():
    server = StuckApiServer()
    yield server
    server.close()


@pytest.mark.parametrize("call", ["list_pods", "scale_workers", "patch_status", "apply"])
async def test_a_call_to_an_api_server_that_never_answers_returns_within_the_timeout(api, call):
    kube = api.kube()
    calls = {"list_pods": lambda: kube.list_pods("ns", "chat"),
             "scale_workers": lambda: kube.scale_workers("ns", "chat", 2),
             "patch_status": lambda: kube.patch_status("ns", "chat", {"budget": 0.5}),
             "apply": lambda: kube.apply(manifests.service(manifests.Owner("chat", "ns", "u"),
                                                           OperatorSettings().worker))}
    started = time.monotonic()
    with pytest.raises(KubeTimeout, match="timed out|did not finish"):
        await calls[call]()
    assert time.monotonic() - started < 2 * TIMEOUT_S + 0.5


def draining_pod(name: str) -> dict:
    return {"metadata": {"name": name, "labels": manifests.selector("chat")},
            "spec": {"nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "127.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True"},
                                      {"type": "DisruptionTarget", "status": "True"}]}}


async def test_a_scale_call_that_hangs_is_retried_at_the_next_step_and_surge_follows_success(api):
    settings = OperatorSettings()
    settings.worker.control_port = 1  # nothing listens: streams stay down, as for a lost worker
    ca = pki.make_ca()
    client = pki.issue(ca, pki.OPERATOR_COMMON_NAME, server=False)
    statuses, events = [], []

    async def patch_status(ns, name, patch):
        statuses.append(patch)

    deps = LoopDeps(settings=settings, tls=ClientTls(ca.cert_pem, client.cert_pem, client.key_pem),
                    epoch=int(time.time() * 1000), sequence=itertools.count(1), sender="op-test",
                    patch_status=patch_status, emit_event=lambda *e: events.append(e),
                    scale_workers=api.kube().scale_workers)
    spec = {"model": "default", "replicas": 2, "slo": {"ttftP95Ms": 500}, "quality": {"minBudget": 0.4},
            "control": {"intervalSeconds": 1, "replaceDisruptedPods": True}}
    loop = ControlLoop(manifests.Owner("chat", "ns", "uid"), {"spec": spec, "metadata": {"generation": 1}},
                       ModelRuntime(pods={"w0": draining_pod("w0")}), {}, deps)
    try:
        started = time.monotonic()
        decision = await loop.step()  # the API server hangs: the step still ends, surge unchanged
        assert decision.surge_replicas == 1
        assert time.monotonic() - started < 2 * TIMEOUT_S + 1.0
        assert loop.surge == 0 and statuses[-1]["surgeReplicas"] == 0
        assert not any(e[1] == "ReplacingCapacity" for e in events)

        api.answering.set()
        await loop.step()  # the same decision, retried
        assert [(path, body) for path, body in api.patches] == [
            ("/apis/apps/v1/namespaces/ns/deployments/chat-worker", {"spec": {"replicas": 3}})]
        assert loop.surge == 1
        assert [e[1] for e in events if e[1] == "ReplacingCapacity"] == ["ReplacingCapacity"]
    finally:
        await loop.pool.close()
