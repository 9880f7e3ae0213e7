"""Thin Kubernetes API I/O for the operator: apply rendered objects, the CA Secret, status patches.

The only module besides handlers.py that talks to the API server. Uses the official client
(synchronous) from worker threads so kopf's event loop never blocks. `Kube.connect()` loads the
in-cluster config when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config).

Every call is bounded by `timeout_s`: the client's own (connect, read) timeout, and the awaiting
side gives up after that much again (a server trickling bytes can outlast a per-read timeout), so a
stuck API server costs one control step a bounded delay, never the loop. A call that timed out
raises `KubeTimeout`.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Callable, Mapping

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from dynasparse_operator import manifests, pki

STRATEGIC = "application/strategic-merge-patch+json"
DEFAULT_TIMEOUT_S = 10.0


class KubeTimeout(TimeoutError):
    """An API call did not finish within the operator's Kubernetes timeout."""


def single_attempt(config: kubernetes.client.Configuration) -> kubernetes.client.Configuration:
    """No retries inside the HTTP library: each attempt would get the full timeout again (reads
    are retried three times by default); the control step itself retries at its next run."""
    config.retries = False
    return config


class Kube:
    def __init__(self, api_client: kubernetes.client.ApiClient, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.client = api_client
        self.timeout_s = timeout_s
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self.networking = kubernetes.client.NetworkingV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)

    @classmethod
    def connect(cls, timeout_s: float = DEFAULT_TIMEOUT_S) -> "Kube":
        config = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=config)
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=config)
        return cls(kubernetes.client.ApiClient(single_attempt(config)), timeout_s)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One API call (in the calling worker thread) with the client-side timeout."""
        try:
            return fn(*args, _request_timeout=(self.timeout_s, self.timeout_s), **kwargs)
        except urllib3.exceptions.TimeoutError as exc:
            raise KubeTimeout(f"Kubernetes API call {getattr(fn, '__name__', '?')} timed out after "
                              f"{self.timeout_s:g} s") from exc

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(*args)` in a worker thread, awaited at most twice the timeout in all."""
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), 2 * self.timeout_s)
        except KubeTimeout:
            raise  # the client's own timeout (a TimeoutError too)
        except asyncio.TimeoutError:
            raise KubeTimeout(f"a Kubernetes API call did not finish within {2 * self.timeout_s:g} s") from None

    # --- owned objects ---------------------------------------------------------------------------

    async def apply(self, obj: Mapping[str, Any]) -> str:
        """Create the object, or merge-patch it to match; returns 'created' | 'patched'."""
        return await self._run(self._apply, obj)

    def _verbs(self, kind: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
        return {
            "Deployment": (self.apps.create_namespaced_deployment, self.apps.patch_namespaced_deployment),
            "Service": (self.core.create_namespaced_service, self.core.patch_namespaced_service),
            "Secret": (self.core.create_namespaced_secret, self.core.patch_namespaced_secret),
            "NetworkPolicy": (self.networking.create_namespaced_network_policy,
                              self.networking.patch_namespaced_network_policy),
        }[kind]

    def _apply(self, obj: Mapping[str, Any]) -> str:
        kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        create, patch = self._verbs(kind)
        try:
            self._call(create, ns, obj)
            return "created"
        except ApiException as exc:
            if exc.status != 409:
                raise
        self._call(patch, name, ns, obj, _content_type=STRATEGIC)
        return "patched"

    async def create_if_absent(self, obj: Mapping[str, Any]) -> bool:
        """Create the object unless one of that name exists (kept as it is); True if created.
        Needs only `create`: the operator never reads what it does not own."""
        def create() -> bool:
            try:
                self._call(self._verbs(obj["kind"])[0], obj["metadata"]["namespace"], obj)
                return True
            except ApiException as exc:
                if exc.status != 409:
                    raise
                return False
        return await self._run(create)

    async def read_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        def read() -> dict[str, bytes] | None:
            try:
                secret = self._call(self.core.read_namespaced_secret, name, namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        return await self._run(read)

    async def ensure_ca(self, namespace: str, name: str) -> pki.KeyPair:
        """The operator's CA from its Secret, created on first use (first writer wins)."""
        data = await self.read_secret(namespace, name)
        if data and "ca.crt" in data and "ca.key" in data:
            return pki.KeyPair(data["ca.crt"], data["ca.key"])
        ca = pki.make_ca()
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {"app.kubernetes.io/part-of": "dynasparse",
                                        "app.kubernetes.io/component": "ca"}},
                "stringData": {"ca.crt": ca.cert_pem.decode(), "ca.key": ca.key_pem.decode()}}
        try:
            await self._run(self._call, self.core.create_namespaced_secret, namespace, body)
            return ca
        except ApiException as exc:
            if exc.status != 409:
                raise
        data = await self.read_secret(namespace, name)  # another replica won the race
        return pki.KeyPair(data["ca.crt"], data["ca.key"])

    # --- AdaptiveModel ---------------------------------------------------------------------------

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        await self._run(
            self._call, self.custom.patch_namespaced_custom_object_status, manifests.GROUP, manifests.VERSION,
            namespace, manifests.PLURAL, name, {"status": dict(status)},
            _content_type="application/merge-patch+json")

    async def scale_workers(self, namespace: str, model: str, replicas: int) -> None:
        await self._run(self._call, self.apps.patch_namespaced_deployment,
                        manifests.deployment_name(model), namespace,
                        {"spec": {"replicas": replicas}}, _content_type=STRATEGIC)

    async def list_pods(self, namespace: str, model: str) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            pods = self._call(self.core.list_namespaced_pod, namespace,
                              label_selector=manifests.selector_string(model))
            return [self.client.sanitize_for_serialization(p) for p in pods.items]
        return await self._run(read)
