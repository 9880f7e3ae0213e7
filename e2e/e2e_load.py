"""Open-loop load through the workers' OpenAI API, as a Service would spread it: each request goes
to one of the currently ready pods behind the model's Service (what its endpoints would list).
Used by scenarios 3 and 5.

A request refused at connect time was never admitted, so it is retried once on another endpoint
(what any L4/L7 balancer does); every other error counts as a failed request.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import threading
import time

import httpx

from dynasparse.devcluster.fixture import DevCluster


@dataclasses.dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    latencies_s: list[float] = dataclasses.field(default_factory=list)


def ready_endpoints(cluster: DevCluster, namespace: str, service: str, port_name: str = "http") -> list[str]:
    """URLs of the ready pods behind a Service, resolved as an endpoints controller would (the dev
    cluster's loopback pod IPs are refused in EndpointSlices, so we read the pods directly)."""
    svc = cluster.api.get(f"/api/v1/namespaces/{namespace}/services/{service}")
    port = next(p for p in svc["spec"]["ports"] if p.get("name") == port_name)
    selector = ",".join(f"{k}={v}" for k, v in (svc["spec"].get("selector") or {}).items())
    pods = cluster.api.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)["items"]
    urls = []
    for pod in pods:
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])
        if not ready or pod["metadata"].get("deletionTimestamp") or not pod["status"].get("podIP"):
            continue
        target = port.get("targetPort", port["port"])
        if isinstance(target, str):
            target = next((cp["containerPort"] for c in pod["spec"]["containers"] for cp in c.get("ports") or []
                           if cp.get("name") == target), None)
        if target:
            urls.append(f"http://{pod['status']['podIP']}:{target}")
    return urls


class OpenLoopLoad:
    """`rate` requests per second (Poisson arrivals), each a short completion, until `stop()`."""

    def __init__(self, cluster: DevCluster, namespace: str, service: str, rate: float, max_tokens: int = 8):
        self.cluster, self.namespace, self.service = cluster, namespace, service
        self.rate, self.max_tokens = rate, max_tokens
        self.result = LoadResult()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._endpoints: list[str] = []
        self._threads: list[threading.Thread] = []

    def _refresh(self) -> None:
        while not self._stop.is_set():
            try:
                self._endpoints = ready_endpoints(self.cluster, self.namespace, self.service)
            except Exception:  # noqa: BLE001 - keep the last view
                pass
            time.sleep(0.3)

    def _one(self, prompt: str) -> None:
        started = time.monotonic()
        tried: set[str] = set()
        for _attempt in range(2):
            choices = [e for e in self._endpoints if e not in tried] or list(self._endpoints)
            if not choices:
                time.sleep(0.5)
                continue
            url = random.choice(choices)
            tried.add(url)
            try:
                resp = httpx.post(f"{url}/v1/completions", timeout=120, json={
                    "model": "default", "prompt": prompt, "max_tokens": self.max_tokens})
                with self._lock:
                    if resp.status_code == 200:
                        self.result.ok += 1
                        self.result.latencies_s.append(time.monotonic() - started)
                    else:
                        self.result.failed += 1
                        self.result.errors.append(f"{url}: HTTP {resp.status_code} {resp.text[:200]}")
                return
            except httpx.ConnectError:
                continue  # never admitted: retry elsewhere
            except Exception as exc:  # noqa: BLE001 - counted
                with self._lock:
                    self.result.failed += 1
                    self.result.errors.append(f"{url}: {exc!r}")
                return
        with self._lock:
            self.result.failed += 1
            self.result.errors.append("no endpoint accepted the request")

    def _generate(self) -> None:
        for i in itertools.count():
            if self._stop.is_set():
                return
            thread = threading.Thread(target=self._one, args=(f"Request {i}: the capital of France is",),
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
            with self._lock:
                self.result.sent += 1
            self._stop.wait(random.expovariate(self.rate))

    def start(self) -> "OpenLoopLoad":
        threading.Thread(target=self._refresh, daemon=True).start()
        time.sleep(0.5)
        threading.Thread(target=self._generate, daemon=True).start()
        return self

    def stop(self, drain_timeout: float = 120.0) -> LoadResult:
        self._stop.set()
        deadline = time.monotonic() + drain_timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        return self.result
