"""Load through the workers' OpenAI API with the `openai` client, as a Service would spread it: each
request goes to one of the currently ready pods behind the model's Service (what its endpoints
would list). Used by scenarios 3 and 5.

* `OpenLoopLoad`: Poisson arrivals at a fixed rate until `stop()` (arrivals do not wait for
  answers, so a slower server sees a growing queue, as under real traffic).
* `probe_capacity`: a short closed-loop probe (each pod kept busy by a fixed number of clients)
  that measures what the pods serve per second right now; scenario 3 sizes its load from it.

Requests stream, so the client sees the time to the first token (what the workers report as TTFT)
as well as the whole answer. A request that was never admitted (connection refused, or 429 with
Retry-After because the pod's queue is full) is sent again, elsewhere or after the wait, for up to
`PATIENCE_S` (what a balancer plus an OpenAI client with retries does); every other error, or a
request still refused after its patience, counts as a failed request.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import statistics
import threading
import time

import openai

from e2e_support import model_api_key

from dynasparse.devcluster.fixture import DevCluster

REQUEST_TIMEOUT_S = 120.0


@dataclasses.dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    busy_refusals: int = 0  # 429s answered (the request was re-sent after Retry-After)
    errors: list[str] = dataclasses.field(default_factory=list)
    latencies_s: list[float] = dataclasses.field(default_factory=list)  # whole answers
    ttfts_s: list[float] = dataclasses.field(default_factory=list)  # to the first streamed token


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


class _Clients:
    """One `openai.OpenAI` per pod URL, shared by the threads (the client is thread-safe). No
    retries inside the client: the caller decides what a refused connection means. No keep-alive:
    each request opens its own connection, so a pod that shuts down refuses the next one (retried
    elsewhere) instead of dropping a pooled connection under a request already sent."""

    def __init__(self, api_key: str):
        self._api_key = api_key
        self._by_url: dict[str, openai.OpenAI] = {}
        self._lock = threading.Lock()

    def get(self, url: str) -> openai.OpenAI:
        with self._lock:
            if url not in self._by_url:
                self._by_url[url] = openai.OpenAI(
                    base_url=f"{url}/v1", api_key=self._api_key, max_retries=0, timeout=REQUEST_TIMEOUT_S,
                    default_headers={"Connection": "close"})
            return self._by_url[url]

    def close(self) -> None:
        with self._lock:
            for client in self._by_url.values():
                client.close()
            self._by_url.clear()


def _never_admitted(exc: Exception) -> bool:
    """A connection the pod refused (not a timeout, not a broken stream): safe to send elsewhere.
    The cause is the HTTP library's ConnectError; matched by name, because the `openai` client may
    bring its own HTTP package (httpx2) rather than httpx."""
    if not isinstance(exc, openai.APIConnectionError) or isinstance(exc, openai.APITimeoutError):
        return False
    return any(cls.__name__ == "ConnectError" for cls in type(exc.__cause__).__mro__)


def _busy_retry_after(exc: Exception) -> float | None:
    """Seconds to wait before sending again if the pod refused the request as busy (429, its
    admission queue is full: the request never started), else None. Clients such as `openai`'s
    retry these by default; the load does the same, elsewhere or later."""
    if isinstance(exc, openai.RateLimitError):
        try:
            return float(exc.response.headers.get("retry-after", 1))
        except (TypeError, ValueError):
            return 1.0
    return None


def complete(client: openai.OpenAI, prompt: str, max_tokens: int) -> tuple[float, float]:
    """One streamed completion; (seconds to the first token, seconds to the whole answer)."""
    started = time.monotonic()
    first = None
    stream = client.completions.create(model="default", prompt=prompt, max_tokens=max_tokens, stream=True)
    with stream:
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].text:
                first = time.monotonic() - started
    total = time.monotonic() - started
    return (first if first is not None else total), total


PATIENCE_S = 60.0  # how long one request keeps being re-sent while pods refuse it (never admitted)


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
        self._clients = _Clients(model_api_key(cluster, namespace, service))

    def _refresh(self) -> None:
        while not self._stop.is_set():
            try:
                self._endpoints = ready_endpoints(self.cluster, self.namespace, self.service)
            except Exception:  # noqa: BLE001 - keep the last view
                pass
            time.sleep(0.3)

    def _one(self, prompt: str) -> None:
        tried: set[str] = set()
        give_up = time.monotonic() + PATIENCE_S
        while time.monotonic() < give_up:
            choices = [e for e in self._endpoints if e not in tried] or list(self._endpoints)
            if not choices:
                time.sleep(0.5)
                continue
            url = random.choice(choices)
            tried.add(url)
            try:
                ttft, total = complete(self._clients.get(url), prompt, self.max_tokens)
                with self._lock:
                    self.result.ok += 1
                    self.result.ttfts_s.append(ttft)
                    self.result.latencies_s.append(total)
                return
            except Exception as exc:  # noqa: BLE001 - counted unless never admitted
                if _never_admitted(exc):
                    if not [e for e in self._endpoints if e not in tried]:
                        time.sleep(0.2)  # every pod refused: let the endpoint view catch up
                        tried.clear()
                    continue  # retry elsewhere
                wait = _busy_retry_after(exc)
                if wait is not None:
                    with self._lock:
                        self.result.busy_refusals += 1
                    time.sleep(min(wait, 5.0, max(0.0, give_up - time.monotonic())))
                    tried.discard(url)
                    continue  # busy: retry after Retry-After, anywhere
                with self._lock:
                    self.result.failed += 1
                    self.result.errors.append(f"{url}: {exc!r}")
                return
        with self._lock:
            self.result.failed += 1
            self.result.errors.append(f"no endpoint accepted the request within {PATIENCE_S:.0f} s")

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

    def stop(self, drain_timeout: float = REQUEST_TIMEOUT_S) -> LoadResult:
        self._stop.set()
        deadline = time.monotonic() + drain_timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        if all(not t.is_alive() for t in self._threads):
            self._clients.close()
        return self.result


@dataclasses.dataclass(frozen=True)
class Capacity:
    """What a closed-loop probe measured across the pods."""

    pods: int
    clients_per_pod: int
    requests: int
    requests_per_s: float  # answers per second across all pods, while every client was busy
    service_s: float  # median time of a whole answer
    ttft_s: float  # median time to the first token


def probe_capacity(cluster: DevCluster, namespace: str, service: str, *, clients_per_pod: int = 1,
                   seconds: float = 10.0, max_tokens: int = 8, min_rounds: int = 2) -> Capacity:
    """Keep each ready pod busy with `clients_per_pod` clients sending back-to-back requests for
    `seconds`, and each client for at least `min_rounds` requests (on a slow machine a few answers
    would make a noisy rate), after one warm-up request per pod."""
    urls = ready_endpoints(cluster, namespace, service)
    assert urls, f"no ready pod behind Service {service}"
    clients = _Clients(model_api_key(cluster, namespace, service))
    try:
        for url in urls:
            complete(clients.get(url), "Warm-up: the capital of France is", max_tokens)
        samples: list[tuple[float, float]] = []
        lock = threading.Lock()
        deadline = time.monotonic() + seconds

        def client_loop(url: str, k: int) -> None:
            for i in itertools.count():
                if time.monotonic() >= deadline and i >= min_rounds:
                    return
                sample = complete(clients.get(url), f"Probe {k}.{i}: the capital of France is", max_tokens)
                with lock:
                    samples.append(sample)

        threads = [threading.Thread(target=client_loop, args=(url, k), daemon=True)
                   for k, url in enumerate(urls * clients_per_pod)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()  # each request times out on its own
        elapsed = time.monotonic() - started
    finally:
        clients.close()
    assert samples, "the capacity probe got no answer"
    return Capacity(pods=len(urls), clients_per_pod=clients_per_pod, requests=len(samples),
                    requests_per_s=len(samples) / elapsed,
                    service_s=statistics.median(total for _, total in samples),
                    ttft_s=statistics.median(first for first, _ in samples))
