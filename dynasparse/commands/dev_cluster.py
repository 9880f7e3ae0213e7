"""`dynasparse dev-cluster build|up|down|status`: the development Kubernetes control plane.

`build` compiles the control plane and helm into the cache folder once per machine (scripts/setup.sh
calls it); `up` starts etcd, kube-apiserver, controller-manager, scheduler and the process kubelet in
the background and returns once the cluster is ready; `down` stops everything `up` started.
The heavy lifting is in `dynasparse.devcluster`; this module only parses arguments and prints.
"""

from __future__ import annotations

import argparse

HELP = "build, start or stop the local Kubernetes control plane used for development and e2e tests"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="build kube-apiserver, controllers, kubectl and helm (once per machine)")
    build.add_argument("--force", action="store_true", help="rebuild even if the cache is complete")
    up = sub.add_parser("up", help="start a cluster in DIR and return once it is ready")
    up.add_argument("--dir", required=True, help="state directory: kubeconfig, bin/, logs/, pki/")
    up.add_argument("--nodes", type=int, default=4, help="number of GPU nodes (plus one CPU node)")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    down = sub.add_parser("down", help="stop the cluster started in DIR")
    down.add_argument("--dir", required=True)
    down.add_argument("--purge", action="store_true", help="also delete DIR")
    status = sub.add_parser("status", help="say whether the cluster in DIR is running")
    status.add_argument("--dir", required=True)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dynasparse.devcluster import binaries, cluster

    if args.action == "build":
        built = binaries.build(force=args.force)
        print(f"[dev-cluster] ready: {built.kube_apiserver.parent} (etcd: {built.etcd})")
        return 0
    state_dir = Path(args.dir).resolve()
    if args.action == "up":
        info = cluster.up(state_dir, gpu_nodes=args.nodes, timeout=args.timeout)
        print(f"[dev-cluster] up in {info.startup_seconds:.1f} s: API server {info.server}")
        print(f"  export KUBECONFIG={info.kubeconfig}")
        print(f"  export PATH={state_dir / 'bin'}:$PATH")
        print(f"  kubectl get nodes    # stop with: dynasparse dev-cluster down --dir {args.dir}")
        return 0
    if args.action == "down":
        stopped = cluster.down(state_dir, purge=args.purge)
        print(f"[dev-cluster] stopped {len(stopped)} processes" + (f": {', '.join(stopped)}" if stopped else ""))
        return 0
    alive = cluster.status(state_dir)
    for name, running in alive.items():
        print(f"{name:26s} {'running' if running else 'stopped'}")
    return 0 if alive and all(alive.values()) else 1
