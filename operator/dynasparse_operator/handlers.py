"""Thin kopf handlers: AdaptiveModel reconcile and control daemon, pod and node watchers.

`build_registry()` registers everything on a fresh kopf.OperatorRegistry (nothing at import time);
commands/run.py passes it to kopf.run together with a `memo` built by `make_memo()`. Each
handler goes body -> typed spec -> pure functions (manifests, pki, signals) -> one apply or patch.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from typing import Any

import kopf

from dynasparse_operator import api_key, manifests, network_policy, pki, signals, worker_policy
from dynasparse_operator.daemon import ControlLoop, LoopDeps, Registry
from dynasparse_operator.grpc_client import ClientCertificates
from dynasparse_operator.kube import Kube
from dynasparse_operator.metrics import OperatorMetrics
from dynasparse_operator.settings import OperatorSettings
from dynasparse_operator.spec import parse_spec

log = logging.getLogger(__name__)
WORKER_LABELS = dict(manifests.COMPONENT_LABELS)
AM = (manifests.GROUP, manifests.VERSION, manifests.PLURAL)


@dataclasses.dataclass
class OperatorContext:
    """kopf's memo: everything the handlers share within one operator process."""

    settings: OperatorSettings
    metrics: OperatorMetrics
    registry: Registry = dataclasses.field(default_factory=Registry)
    epoch: int = dataclasses.field(default_factory=lambda: int(time.time() * 1000))
    sequence: itertools.count = dataclasses.field(default_factory=lambda: itertools.count(1))
    kube: Kube | None = None
    ca: pki.KeyPair | None = None
    client_tls: ClientCertificates | None = None


def make_memo(settings: OperatorSettings, metrics: OperatorMetrics) -> kopf.Memo:
    memo = kopf.Memo()
    memo.ctx = OperatorContext(settings=settings, metrics=metrics)
    return memo


def ca_namespace(settings: OperatorSettings) -> str:
    if settings.pki.namespace or settings.server.namespace:
        return settings.pki.namespace or settings.server.namespace
    return operator_namespace(settings)


def operator_namespace(settings: OperatorSettings) -> str:
    """Where the operator's pods run (downward API, else the service-account file, else default)."""
    if settings.server.namespace:
        return settings.server.namespace
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip()
    except OSError:
        return "default"


def build_registry() -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """A fresh registry has no default login: in a pod the ServiceAccount, else $KUBECONFIG."""
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        ctx: OperatorContext = memo.ctx
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="dynasparse.io")
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 300
        # kopf's own calls (status patches of handlers, events) get the same bound as ours
        settings.networking.request_timeout = ctx.settings.kube.request_timeout_s
        settings.networking.connect_timeout = ctx.settings.kube.request_timeout_s
        ctx.kube = Kube.connect(ctx.settings.kube.request_timeout_s)
        ctx.ca = await ctx.kube.ensure_ca(ca_namespace(ctx.settings), ctx.settings.pki.ca_secret)
        ctx.client_tls = ClientCertificates(ctx.ca)  # renewed as it ages, streams follow
        log.info("operator epoch %d; CA from %s/%s", ctx.epoch, ca_namespace(ctx.settings),
                 ctx.settings.pki.ca_secret)

    @kopf.on.resume(*AM, registry=registry)
    @kopf.on.create(*AM, registry=registry)
    @kopf.on.update(*AM, field="spec", registry=registry)
    async def reconcile(spec: Any, name: str, namespace: str, uid: str, status: Any, body: kopf.Body,
                        memo: kopf.Memo, patch: kopf.Patch, **_: Any) -> None:
        """Worker TLS Secret, API key, NetworkPolicy, Deployment and Service match the spec (owned
        by the model), unless the spec asks for what the operator's settings do not allow."""
        ctx: OperatorContext = memo.ctx
        parsed = parse_spec(dict(spec))
        owner = manifests.Owner(name, namespace, uid)
        refused = worker_policy.violations(parsed, ctx.settings.worker)
        patch.status["specRejected"] = "; ".join(refused) or None
        if refused:  # nothing created or changed; a fixed spec runs this handler again
            kopf.event(body, type="Warning", reason="SpecRejected", message="; ".join(refused))
            log.warning("%s/%s: spec rejected: %s", namespace, name, "; ".join(refused))
            return
        await _ensure_worker_tls(ctx, owner)
        if api_key.operator_made(parsed):
            await ctx.kube.create_if_absent(api_key.secret(owner, parsed, api_key.new_key()))
        if ctx.settings.network_policy.enabled:
            await ctx.kube.apply(network_policy.network_policy(
                owner, ctx.settings.worker, ctx.settings.network_policy, operator_namespace(ctx.settings)))
        surge = int((status or {}).get("surgeReplicas") or 0)
        await ctx.kube.apply(manifests.deployment(parsed, owner, ctx.settings.worker,
                                                  surge_replicas=surge))
        await ctx.kube.apply(manifests.service(owner, ctx.settings.worker))
        patch.status["selector"] = manifests.selector_string(name)
        patch.status["auth"] = api_key.status(owner, parsed)
        ctx.registry.runtime(namespace, name).wake.set()

    @kopf.daemon(*AM, registry=registry, cancellation_timeout=10, initial_delay=0.1)
    async def control(body: kopf.Body, name: str, namespace: str, uid: str, memo: kopf.Memo,
                      stopped: kopf.DaemonStopped, **_: Any) -> None:
        """The closed loop of one model (daemon.py); budgets resume from status."""
        ctx: OperatorContext = memo.ctx
        runtime = ctx.registry.runtime(namespace, name)
        owner = manifests.Owner(name, namespace, uid)
        kube = ctx.kube
        for pod in await kube.list_pods(namespace, name):
            runtime.pods.setdefault(pod["metadata"]["name"], pod)

        def emit(kind: str, reason: str, message: str) -> None:
            kopf.event(body, type=kind, reason=reason, message=message)

        deps = LoopDeps(settings=ctx.settings, tls=ctx.client_tls, epoch=ctx.epoch,
                        sequence=ctx.sequence, sender=ctx.settings.server.pod_name or "dynasparse-operator",
                        patch_status=kube.patch_status, emit_event=emit,
                        scale_workers=kube.scale_workers, metrics=ctx.metrics,
                        renew_worker_tls=lambda: _ensure_worker_tls(ctx, owner))
        loop = ControlLoop(owner, body, runtime, ctx.registry.nodes, deps)
        try:
            await loop.run(lambda: bool(stopped))
        finally:
            ctx.registry.models.pop((namespace, name), None)

    @kopf.on.event("", "v1", "pods", labels=WORKER_LABELS, registry=registry)
    async def worker_pod(event: Any, memo: kopf.Memo, **_: Any) -> None:
        """Keep each model's pod list current; wake its loop when a pod's facts change."""
        ctx: OperatorContext = memo.ctx
        pod = event.get("object") or {}
        meta = pod.get("metadata") or {}
        model = (meta.get("labels") or {}).get(manifests.MODEL_LABEL)
        if not model:
            return
        runtime = ctx.registry.runtime(meta.get("namespace", ""), model)
        name = meta.get("name", "")
        before = runtime.pods.get(name)
        if event.get("type") == "DELETED":
            runtime.pods.pop(name, None)
            ctx.metrics.forget_pod(meta.get("namespace", ""), model, name)
        else:
            runtime.pods[name] = pod
        if _pod_key(before, ctx) != _pod_key(runtime.pods.get(name), ctx):
            runtime.wake.set()

    @kopf.on.event("", "v1", "nodes", registry=registry)
    async def node(event: Any, memo: kopf.Memo, **_: Any) -> None:
        """Node conditions and taints feed forward: wake the loops of models with pods there."""
        ctx: OperatorContext = memo.ctx
        obj = event.get("object") or {}
        name = (obj.get("metadata") or {}).get("name", "")
        before = ctx.registry.nodes.get(name)
        if event.get("type") == "DELETED":
            ctx.registry.nodes.pop(name, None)
        else:
            ctx.registry.nodes[name] = obj
        keys = ctx.settings.signals
        old = signals.node_facts(before, keys) if before else None
        new = signals.node_facts(obj, keys) if event.get("type") != "DELETED" else None
        if old != new:
            ctx.registry.wake_models_on(name)

    @kopf.on.probe(id="control_loops", registry=registry)
    def control_loops(memo: kopf.Memo, **_: Any) -> int:
        return len(memo.ctx.registry.models)

    return registry


def _pod_key(pod: dict | None, ctx: OperatorContext) -> tuple:
    if pod is None:
        return ()
    return (signals.pod_ready(pod), (pod.get("status") or {}).get("podIP"),
            (pod.get("spec") or {}).get("nodeName"),
            signals.pod_disruption(pod, ctx.settings.signals),
            bool((pod.get("metadata") or {}).get("deletionTimestamp")))


async def _ensure_worker_tls(ctx: OperatorContext, owner: manifests.Owner) -> None:
    """Issue the worker certificate when missing, expiring, or signed by another CA."""
    current = await ctx.kube.read_secret(owner.namespace, manifests.tls_secret_name(owner.name))
    cert = (current or {}).get("server.crt", b"")
    if cert and pki.signed_by(cert, ctx.ca) and not pki.needs_renewal(cert):
        return
    leaf = pki.issue(ctx.ca, manifests.worker_common_name(owner), server=True,
                     dns_names=manifests.worker_dns_names(owner))
    await ctx.kube.apply(manifests.tls_secret(owner, ctx.ca.cert_pem, leaf.cert_pem, leaf.key_pem))
