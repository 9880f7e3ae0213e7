"""What one control loop costs per report and per step must not grow with what other models have.

At hundreds of streams an operator handles a report every millisecond or so: judging one must not
parse the spec again, and a step of one model must not read the whole cluster's nodes (every
model's loop steps every interval). Both loops here run without streams to real workers: the
behaviour under test sits between the report callback and the law.
"""

from __future__ import annotations

import itertools
import time

from dynasparse_operator import manifests, pki
from dynasparse_operator.daemon import ControlLoop, LoopDeps, ModelRuntime
from dynasparse_operator.grpc_client import ClientTls
from dynasparse_operator.settings import OperatorSettings
from dynasparse_proto import control_pb2

OWNER = manifests.Owner("chat", "team-a", "uid-1")
SPEC = {"model": "default", "replicas": 1, "slo": {"ttftP95Ms": 500},
        "quality": {"minBudget": 0.4}, "control": {"intervalSeconds": 5}}


class SpecReads(dict):
    """A model body that counts how often the loop reads its spec."""

    spec_reads = 0

    def get(self, key, default=None):
        if key == "spec":
            self.spec_reads += 1
        return super().get(key, default)


class NodesRead(dict):
    """The operator's node registry, noting which nodes a step looked at."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def items(self):
        self.read.update(self.keys())
        return super().items()

    def values(self):
        self.read.update(self.keys())
        return super().values()


def make_loop(body, pods=None, nodes=None) -> ControlLoop:
    ca = pki.make_ca()
    client = pki.issue(ca, pki.OPERATOR_COMMON_NAME, server=False)

    async def patch_status(ns, name, patch):
        pass

    deps = LoopDeps(settings=OperatorSettings(), tls=ClientTls(ca.cert_pem, client.cert_pem, client.key_pem),
                    epoch=int(time.time() * 1000), sequence=itertools.count(1), sender="op-test",
                    patch_status=patch_status, emit_event=lambda *e: None)
    return ControlLoop(OWNER, body, ModelRuntime(pods=pods or {}), nodes or {}, deps)


def report(p95_ms: float) -> control_pb2.Report:
    return control_pb2.Report(pod_name="w0", ttft=control_pb2.LatencySummary(p95_ms=p95_ms, count=50),
                              applied_budget=1.0)


async def test_reports_between_two_steps_are_judged_without_parsing_the_spec_again():
    body = SpecReads(spec=SPEC, metadata={"generation": 1}, status={})
    loop = make_loop(body)
    await loop.step()
    reads = body.spec_reads
    for i in range(100):
        loop._on_report("w0", report(300.0), float(i))
    assert body.spec_reads == reads
    loop.runtime.wake.clear()
    loop._on_report("w0", report(900.0), 100.0)
    assert loop.runtime.wake.is_set(), "a violating report still wakes the loop at once"


async def test_a_spec_change_is_read_by_the_next_step():
    body = {"spec": dict(SPEC), "metadata": {"generation": 1}, "status": {}}
    loop = make_loop(body)
    await loop.step()
    body["spec"] = {**SPEC, "slo": {"ttftP95Ms": 1000}}
    await loop.step()
    loop._on_report("w0", report(900.0), 0.0)  # a pod's first report always wakes the loop
    loop.runtime.wake.clear()
    loop._on_report("w0", report(900.0), 1.0)
    assert not loop.runtime.wake.is_set(), "900 ms is within the new 1000 ms SLO"


def node(name: str, pressure: bool = False) -> dict:
    conditions = [{"type": "Ready", "status": "True"}]
    if pressure:
        conditions.append({"type": "MemoryPressure", "status": "True"})
    return {"metadata": {"name": name}, "status": {"conditions": conditions}}


async def test_a_step_reads_only_the_nodes_its_own_pods_run_on():
    nodes = NodesRead({f"n{i}": node(f"n{i}") for i in range(1000)})
    nodes["n7"] = node("n7", pressure=True)
    nodes.read.clear()
    pod = {"metadata": {"name": "w0", "labels": manifests.selector("chat")}, "spec": {"nodeName": "n7"},
           "status": {"phase": "Running", "podIP": "127.0.0.1",
                      "conditions": [{"type": "Ready", "status": "True"}]}}
    loop = make_loop({"spec": SPEC, "metadata": {"generation": 1}, "status": {}}, {"w0": pod}, nodes)
    try:
        decision = await loop.step()
    finally:
        await loop.pool.close()
    assert nodes.read == {"n7"}
    assert decision.commands["w0"].ceiling < 1.0, "the pod's node pressure still lowers its ceiling"
    assert any("n7 has MemoryPressure" in e for e in decision.events)
