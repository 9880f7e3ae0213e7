"""Thin Kubernetes API I/O for the operator: apply rendered objects, the CA Secret, status patches.

The only module besides handlers.py that talks to the API server. Uses the official client
(synchronous) from worker threads so kopf's event loop never blocks. `Kube.connect()` loads the
in-cluster config when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Mapping

import kubernetes
from kubernetes.client.exceptions import ApiException

from dynasparse_operator import manifests, pki

STRATEGIC = "application/strategic-merge-patch+json"


class Kube:
    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self.client = api_client
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)

    @classmethod
    def connect(cls) -> "Kube":
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        return cls(kubernetes.client.ApiClient())

    # --- owned objects ---------------------------------------------------------------------------

    async def apply(self, obj: Mapping[str, Any]) -> str:
        """Create the object, or merge-patch it to match; returns 'created' | 'patched'."""
        return await asyncio.to_thread(self._apply, obj)

    def _apply(self, obj: Mapping[str, Any]) -> str:
        kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        create, patch = {
            "Deployment": (self.apps.create_namespaced_deployment, self.apps.patch_namespaced_deployment),
            "Service": (self.core.create_namespaced_service, self.core.patch_namespaced_service),
            "Secret": (self.core.create_namespaced_secret, self.core.patch_namespaced_secret),
        }[kind]
        try:
            create(ns, obj)
            return "created"
        except ApiException as exc:
            if exc.status != 409:
                raise
        patch(name, ns, obj, _content_type=STRATEGIC)
        return "patched"

    async def read_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        def read() -> dict[str, bytes] | None:
            try:
                secret = self.core.read_namespaced_secret(name, namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        return await asyncio.to_thread(read)

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
            await asyncio.to_thread(self.core.create_namespaced_secret, namespace, body)
            return ca
        except ApiException as exc:
            if exc.status != 409:
                raise
        data = await self.read_secret(namespace, name)  # another replica won the race
        return pki.KeyPair(data["ca.crt"], data["ca.key"])

    # --- AdaptiveModel ---------------------------------------------------------------------------

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object_status, manifests.GROUP, manifests.VERSION,
            namespace, manifests.PLURAL, name, {"status": dict(status)},
            _content_type="application/merge-patch+json")

    async def scale_workers(self, namespace: str, model: str, replicas: int) -> None:
        await asyncio.to_thread(self.apps.patch_namespaced_deployment,
                                manifests.deployment_name(model), namespace,
                                {"spec": {"replicas": replicas}}, _content_type=STRATEGIC)

    async def list_pods(self, namespace: str, model: str) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            pods = self.core.list_namespaced_pod(namespace,
                                                 label_selector=manifests.selector_string(model))
            return [self.client.sanitize_for_serialization(p) for p in pods.items]
        return await asyncio.to_thread(read)
