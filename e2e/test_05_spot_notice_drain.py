"""Scenario 5: a termination handler taints and cordons a node (`aws-node-termination-handler/spot-itn`,
or `karpenter.sh/disrupted`), then, after the notice period, evicts its pods through the eviction API.
The doomed pods drain with zero failed requests and stay down (drained, the container keeps running
idle and not ready: no restart on the doomed node), the survivors tighten first, and replacements
are scheduled on other nodes."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from e2e_support import BASE_RATE, apply_model, events_for, model_status, needs, ready_worker_pods
from e2e_load import OpenLoopLoad

from dynasparse.devcluster import nodeops
from dynasparse.devcluster.fixture import wait_until
from dynasparse_operator.manifests import DEREGISTER_DELAY_S

SPEC = {"model": "default", "replicas": 3, "slo": {"ttftP95Ms": 3000}, "quality": {"minBudget": 0.3},
        "control": {"intervalSeconds": 1}, "worker": {"drainGraceSeconds": 60}}
NOTICE_SECONDS = 5  # AWS gives 2 minutes; compressed so CI stays fast...
# ...yet the doomed pod must outlive its drain (the deregistration delay, then its in-flight
# requests) by long enough for an exited container to show in its status
AFTER_DRAIN_SECONDS = 12


@pytest.mark.parametrize("notice_taint", ["aws-node-termination-handler/spot-itn", "karpenter.sh/disrupted"])
def test_a_spot_notice_drains_the_doomed_pod_without_failed_requests(operator_running, namespace, notice_taint):
    needs("dynasparse_worker.commands.serve", "the worker's `dynasparse serve` command")
    cluster = operator_running
    name = "spot" if "aws" in notice_taint else "karp"
    apply_model(cluster, namespace, name, SPEC)
    pods = wait_until(lambda: len(ready_worker_pods(cluster, namespace, name)) == 3
                      and ready_worker_pods(cluster, namespace, name), 420, "3 worker pods Ready", interval=2)
    doomed = pods[0]
    doomed_name = doomed["metadata"]["name"]
    node = doomed["spec"]["nodeName"]
    survivors = {p["metadata"]["name"] for p in pods[1:]}
    # half the base load: this scenario is about draining and the feed-forward cut, so the survivors
    # must have headroom over their floor when the notice comes (at the floor there is nothing to cut)
    load = OpenLoopLoad(cluster, namespace, name, rate=BASE_RATE / 2, max_tokens=4).start()
    try:
        time.sleep(3)
        # every survivor reported a budget (the status lists a pod only after its first report)
        budgets_before = wait_until(lambda: _budgets(cluster, namespace, name, survivors), 60,
                                    "the survivors' budgets in the status", interval=0.5)
        nodeops.taint(cluster.api, node, notice_taint, "NoSchedule")
        nodeops.cordon(cluster.api, node)
        tightened = []  # checked last, so a drain problem is reported even if tightening is missing
        deadline = time.monotonic() + NOTICE_SECONDS + 10
        while not tightened and time.monotonic() < deadline:
            tightened = [p for p in model_status(cluster, namespace, name).get("pods") or []
                         if p["name"] in survivors and budgets_before.get(p["name"]) is not None
                         and p.get("budget", 1) < budgets_before[p["name"]]]
            time.sleep(0.5)
        time.sleep(NOTICE_SECONDS)
        wait_until(lambda: not _ready(_pod(cluster, namespace, doomed_name)), 30,
                   "the doomed pod to turn not-ready (draining)", interval=0.5)
        drain_ends = time.monotonic() + DEREGISTER_DELAY_S
        seen = _watch_container(cluster, namespace, doomed_name, lambda: time.monotonic() > drain_ends
                                and _idle(doomed["status"]["podIP"]), SPEC["worker"]["drainGraceSeconds"])
        for pod in nodeops.pods_on(cluster.api, node, namespace):
            nodeops.evict(cluster.api, namespace, pod["metadata"]["name"])
        wait_until(lambda: len([p for p in ready_worker_pods(cluster, namespace, name)
                                if p["spec"]["nodeName"] != node]) == 3, 420,
                   "a replacement pod Ready on another node", interval=2)
        result = load.stop()
    finally:
        load.stop(drain_timeout=1)
        nodeops.untaint(cluster.api, node, notice_taint)
        nodeops.cordon(cluster.api, node, False)
    assert result.failed == 0, f"{result.failed} of {result.sent} requests failed: {result.errors[:5]}"
    assert result.ok > 0
    # read from the API server all along the drain: the doomed pod's container never exited
    assert seen["restarts"] == [0] and seen["states"] == ["running"], \
        f"the doomed pod's container restarted on the doomed node: {seen}"
    assert seen["ready"] == [False], f"the drained pod turned ready again: {seen}"
    assert any(node in m for m in events_for(cluster, namespace, name))
    assert tightened, f"the survivors' budgets did not tighten on the notice: {model_status(cluster, namespace, name).get('pods')}"


def _budgets(cluster, namespace: str, name: str, survivors: set[str]) -> dict[str, float] | None:
    """Each survivor's reported budget, or None until all of them have one."""
    found = {p["name"]: p["budget"] for p in model_status(cluster, namespace, name).get("pods") or []
             if p["name"] in survivors and p.get("budget") is not None}
    return found if set(found) == survivors else None


def _pod(cluster, namespace: str, name: str) -> dict:
    return cluster.api.get(f"/api/v1/namespaces/{namespace}/pods/{name}")


def _ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod["status"].get("conditions") or ())


def _idle(pod_ip: str) -> bool:
    """The worker runs and queues nothing (or no longer answers: it exited)."""
    try:
        text = httpx.get(f"http://{pod_ip}:8000/metrics", timeout=5).text
    except httpx.HTTPError:
        return True
    busy = re.findall(r"^dynasparse_(?:running_sequences|queue_depth) (\S+)$", text, re.M)
    return bool(busy) and all(float(v) == 0 for v in busy)


def _watch_container(cluster, namespace: str, name: str, drained, grace_s: float) -> dict[str, list]:
    """The worker container's restartCount, state and the pod's readiness, as the API server saw
    them every half second until `drained()` (at most the drain grace) and AFTER_DRAIN_SECONDS
    more; each list holds the distinct values, in order."""
    seen: dict[str, list] = {"restarts": [], "states": [], "ready": []}
    deadline = time.monotonic() + DEREGISTER_DELAY_S + grace_s
    done_at = None
    while done_at is None or time.monotonic() < done_at + AFTER_DRAIN_SECONDS:
        if done_at is None and (drained() or time.monotonic() > deadline):
            done_at = time.monotonic()
        pod = _pod(cluster, namespace, name)
        status = next(c for c in pod["status"].get("containerStatuses") or () if c["name"] == "worker")
        for key, value in (("restarts", status["restartCount"]), ("states", next(iter(status["state"]))),
                           ("ready", _ready(pod))):
            if not seen[key] or seen[key][-1] != value:
                seen[key].append(value)
        time.sleep(0.5)
    return seen
