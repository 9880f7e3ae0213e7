"""The operator's side of the benchmark, a process of its own so its CPU time and memory are its own.

`python -m dynasparse.scale_bench.operator_side PLAN.json [--profile OUT.prof]` runs one
`daemon.ControlLoop` per model of the plan, built as the kopf daemon builds it (`LoopDeps` with
the operator's `ClientCertificates` signed by the plan's CA, one shared sequence, its metrics),
so the streams (`grpc_client.StreamPool`), the per-report callback, the control law and the status
patch are the operator's own code. Kubernetes is left out: the pods are given (ready, with
their addresses), and status patches and events go to `ApiStandIn`, which serialises each patch
as the API client would and counts it. Commands arrive on stdin, one per line: `mark NAME`
answers one JSON line with the process's CPU seconds, monotonic time and memory; `stop` ends the
loops and answers with the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from dynasparse.scale_bench.plan import NAMESPACE, Plan
from dynasparse_operator import manifests, pki
from dynasparse_operator.daemon import ControlLoop, LoopDeps, ModelRuntime
from dynasparse_operator.grpc_client import ClientCertificates
from dynasparse_operator.metrics import OperatorMetrics
from dynasparse_operator.settings import OperatorSettings

PODS_PER_NODE = 8


class ApiStandIn:
    """Where status patches and events would go: each patch is merged into the model's body (as
    kopf's watch would hand it back) and serialised once, as the API client would send it."""

    def __init__(self, bodies: Mapping[str, dict]) -> None:
        self.bodies = bodies
        self.patches = 0
        self.patch_bytes = 0
        self.events: dict[str, int] = {}

    async def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.patch_bytes += len(json.dumps({"status": patch}))
        self.patches += 1
        self.bodies[name].setdefault("status", {}).update(patch)

    def event(self, kind: str, reason: str, message: str) -> None:
        self.events[reason] = self.events.get(reason, 0) + 1


def usage() -> dict[str, float]:
    """CPU seconds of this process (every thread: gRPC's own ones too) and of the event loop's
    thread alone (called on it), time and memory."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": ru.ru_utime + ru.ru_stime, "loop_cpu_s": time.thread_time(),
            "at": time.monotonic(), "rss_mb": rss_mb(),
            "peak_rss_mb": peak_rss_mb()}


def rss_mb() -> float:
    return _status_mb("VmRSS:")


def peak_rss_mb() -> float:
    """Peak resident memory of this process image (ru_maxrss would include the parent's before
    exec)."""
    return _status_mb("VmHWM:")


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return 0.0


def ready_pod(name: str, model: str, ip: str, node: str) -> dict:
    return {"metadata": {"name": name, "namespace": NAMESPACE, "labels": manifests.selector(model)},
            "spec": {"nodeName": node},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def build_loops(plan: Plan, api: ApiStandIn, bodies: dict[str, dict]) -> list[ControlLoop]:
    settings = OperatorSettings()
    settings.worker.control_port = plan.port
    settings.control.report_interval_s = plan.report_interval_s
    ca_dir = Path(plan.ca_dir)
    ca = pki.KeyPair((ca_dir / "ca.crt").read_bytes(), (ca_dir / "ca.key").read_bytes())
    tls = ClientCertificates(ca)
    sequence, epoch, metrics = itertools.count(1), int(time.time() * 1000), OperatorMetrics()
    nodes: dict[str, dict] = {}
    loops, index = [], 0
    for model in plan.models:
        pods = {}
        for pod, ip in model.pods.items():
            node = f"node-{index // PODS_PER_NODE:03d}"
            nodes.setdefault(node, {"metadata": {"name": node}, "status": {
                "conditions": [{"type": "Ready", "status": "True"}]}})
            pods[pod] = ready_pod(pod, model.name, ip, node)
            index += 1
        bodies[model.name] = {"metadata": {"name": model.name, "namespace": NAMESPACE,
                                           "uid": model.uid, "generation": 1},
                              "spec": plan.spec(), "status": {}}
        deps = LoopDeps(settings=settings, tls=tls, epoch=epoch, sequence=sequence,
                        sender="scale-bench-operator", patch_status=api.patch_status,
                        emit_event=api.event, metrics=metrics)
        runtime = ModelRuntime(pods=pods)
        runtime.wake.set()  # as the reconcile handler does once the Deployment exists
        loops.append(ControlLoop(model.owner, bodies[model.name], runtime, nodes, deps))
    return loops


async def serve(plan: Plan, profiler: cProfile.Profile | None = None) -> dict:
    """Run the loops until `stop`; `profiler` runs from the first mark (streams are up by then)."""
    bodies: dict[str, dict] = {}
    api = ApiStandIn(bodies)
    baseline = usage()
    loops = build_loops(plan, api, bodies)
    stopped = asyncio.Event()
    tasks = [asyncio.create_task(loop.run(stopped.is_set)) for loop in loops]
    say({"ready": True, **baseline})
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    profiling = False
    while line := (await reader.readline()).decode().strip():
        if line.startswith("mark "):
            if profiler is not None and not profiling:
                profiler.enable()
                profiling = True
            say({"mark": line[5:], **usage(), "connected": connected(loops)})
        elif line == "stop":
            break
    stopped.set()
    for loop in loops:
        loop.runtime.wake.set()
    await asyncio.gather(*tasks)
    if profiling:
        profiler.disable()
    return {"stopped": True, **usage(), "status_patches": api.patches,
            "status_patch_bytes": api.patch_bytes, "events": api.events}


def connected(loops: list[ControlLoop]) -> int:
    return sum(1 for loop in loops for s in loop.pool.streams.values() if s.connected)


def say(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", type=Path)
    parser.add_argument("--profile", type=Path, default=None, help="write cProfile stats here")
    args = parser.parse_args(argv)
    plan = Plan.load(args.plan)
    profiler = cProfile.Profile() if args.profile else None
    result = asyncio.run(serve(plan, profiler))
    if profiler:
        profiler.dump_stats(args.profile)
    say(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
