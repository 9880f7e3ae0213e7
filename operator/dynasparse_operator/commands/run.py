"""`dynasparse operator`: run the kopf operator (handlers.py) until interrupted.

Settings come from DYNASPARSE_CONFIG and DYNASPARSE_* env vars (settings.py); the flags below
choose what to watch and how to share the work. kopf is imported inside `run` only.
"""

from __future__ import annotations

import argparse

HELP = "Run the operator: reconcile AdaptiveModels and steer their workers' budgets."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[],
                       help="Watch AdaptiveModels in this namespace (repeatable).")
    scope.add_argument("--all-namespaces", "-A", action="store_true",
                       help="Watch AdaptiveModels in every namespace (the default when no --namespace).")
    parser.add_argument("--peering", default="",
                        help="kopf peering name: replicas with the same name run one at a time "
                             "(needs the kopf peering CRDs); empty runs standalone.")
    parser.add_argument("--priority", type=int, default=0,
                        help="Peering priority of this replica (highest is active).")
    parser.add_argument("--health-port", type=int, default=None,
                        help="Liveness endpoint port, path /healthz (default: settings server.healthPort).")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="Prometheus port (default: settings server.metricsPort; 0 disables).")
    parser.add_argument("--verbose", "-v", action="store_true", help="Debug logging.")


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import os

    import kopf

    from dynasparse_operator.handlers import build_registry, make_memo
    from dynasparse_operator.metrics import OperatorMetrics
    from dynasparse_operator.settings import load_settings

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # one line per pod/node event handled is noise at INFO
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings = load_settings()
    _check_credentials()
    if args.health_port is not None:
        settings.server.health_port = args.health_port
    if args.metrics_port is not None:
        settings.server.metrics_port = args.metrics_port
    bind = os.environ.get("DYNASPARSE_POD_IP") or "0.0.0.0"  # the pod IP when the chart sets it
    metrics = OperatorMetrics()
    metrics.start(settings.server.metrics_port, bind)
    liveness = (f"http://{bind}:{settings.server.health_port}/healthz"
                if settings.server.health_port else None)
    clusterwide = args.all_namespaces or not args.namespace
    asyncio.run(kopf.operator(
        registry=build_registry(),
        memo=make_memo(settings, metrics),
        clusterwide=clusterwide,
        namespaces=() if clusterwide else args.namespace,
        standalone=not args.peering,
        peering_name=args.peering or None,
        priority=args.priority,
        liveness_endpoint=liveness,
    ))
    return 0


def _check_credentials() -> None:
    """Fail with one line, before kopf starts, when there is no way to reach an API server."""
    import kubernetes

    from dynasparse_operator.errors import UserError

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        try:
            kubernetes.config.load_kube_config()
        except (kubernetes.config.ConfigException, OSError) as exc:
            raise UserError(f"no Kubernetes credentials ({exc}): set KUBECONFIG, or run the "
                            "operator in a pod with a ServiceAccount") from exc
