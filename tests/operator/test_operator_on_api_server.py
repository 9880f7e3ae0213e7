"""The operator's handlers, CRD and status against a real API server (the dev cluster).

The operator runs as a real `dynasparse operator` process with the admin kubeconfig. Worker pods
use an image the process kubelet does not run (it reports them Running and Ready without a
process), so these tests exercise reconcile, the CRD, status, events, node signals and restart
safety without loading a model; the control streams to real workers are covered by
test_operator_control_stream.py and by e2e/.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dynasparse.devcluster import nodeops
from dynasparse.devcluster.fixture import wait_until
from dynasparse_operator import pki

pytestmark = pytest.mark.cluster
CRD = Path(__file__).resolve().parents[2] / "charts/dynasparse/crds/adaptivemodels.yaml"
AM_PATH = "/apis/dynasparse.io/v1alpha1/namespaces/{ns}/adaptivemodels"
SPOT = "aws-node-termination-handler/spot-itn"


def model(name="chat", replicas=2, **spec):
    body = {"apiVersion": "dynasparse.io/v1alpha1", "kind": "AdaptiveModel",
            "metadata": {"name": name},
            "spec": {"model": "default", "replicas": replicas, "slo": {"ttftP95Ms": 500},
                     "quality": {"minBudget": 0.4}, "control": {"intervalSeconds": 1},
                     "worker": {"image": "example.com/not-run/worker:1", "gpus": 1}}}
    body["spec"].update(spec)
    return body


@pytest.fixture(scope="module")
def crd(dev_cluster):
    dev_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    dev_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        "crd/adaptivemodels.dynasparse.io")
    return dev_cluster


@pytest.fixture
def operator(crd, namespace, tmp_path):
    env = dict(crd.env, DYNASPARSE_CA_NAMESPACE=namespace, DYNASPARSE_HEALTH_PORT="0",
               DYNASPARSE_METRICS_PORT="0", DYNASPARSE_POD_NAME="op-test",
               DYNASPARSE_POD_NAMESPACE="dynasparse-system",
               DYNASPARSE_WORKER_ALLOWED_IMAGES="example.com/not-run/*")
    log = tmp_path / "operator.log"

    def start():
        with log.open("a") as out:
            return subprocess.Popen([sys.executable, "-m", "dynasparse", "operator", "-n", namespace],
                                    env=env, stdout=out, stderr=subprocess.STDOUT)
    procs = [start()]
    yield procs, start, log
    print("operator log (tail):\n" + log.read_text()[-4000:])  # shown when the test failed
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def get_am(cluster, ns, name="chat"):
    return cluster.api.get(f"{AM_PATH.format(ns=ns)}/{name}")


def conditions(am):
    return {c["type"]: c for c in (am.get("status") or {}).get("conditions") or ()}


def test_invalid_specs_are_rejected_with_readable_messages(crd, namespace):
    cases = [({"quality": {"minBudget": 0.5, "maxLoss": 0.1}}, "exactly one of quality.maxLoss"),
             ({"slo": {}}, "slo.ttftP95Ms, slo.interTokenP95Ms, or both"),
             ({"quality": {"minBudget": 1.5}}, "spec.quality.minBudget"),
             ({"control": {"responsiveness": 3}}, "spec.control.responsiveness")]
    for override, message in cases:
        result = crd.kubectl("apply", "-n", namespace, "-f", "-", check=False,
                             stdin=json.dumps(model(**override)))
        assert result.returncode != 0 and message in result.stderr, result.stderr


def test_model_owns_deployment_service_and_a_certificate_signed_by_the_operator_ca(operator, crd, namespace):
    crd.api.post(AM_PATH.format(ns=namespace), model())
    dep = wait_until(lambda: crd.api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/chat-worker"),
                     180, "the worker Deployment (the operator starts slowly on a busy machine)")
    assert dep["spec"]["replicas"] == 2
    assert dep["metadata"]["ownerReferences"][0]["kind"] == "AdaptiveModel"
    # the Service is applied right after the Deployment, in a later API call: wait for it too
    svc = wait_until(lambda: crd.api.get(f"/api/v1/namespaces/{namespace}/services/chat"), 30,
                     "the model's Service")
    assert {p["name"] for p in svc["spec"]["ports"]} == {"http", "control"}
    secret = crd.api.get(f"/api/v1/namespaces/{namespace}/secrets/chat-worker-tls")["data"]
    ca = crd.api.get(f"/api/v1/namespaces/{namespace}/secrets/dynasparse-ca")["data"]
    ca_pair = pki.KeyPair(base64.b64decode(ca["ca.crt"]), base64.b64decode(ca["ca.key"]))
    assert pki.signed_by(base64.b64decode(secret["server.crt"]), ca_pair)

    am = wait_until(lambda: (a := get_am(crd, namespace)) and
                    (a.get("status") or {}).get("readyReplicas") == 2 and a, 240, "2 ready pods in status")
    assert am["status"]["selector"].endswith("dynasparse.io/model=chat")
    conds = conditions(am)
    assert conds["Ready"]["status"] == "True"
    assert conds["Degraded"]["reason"] == "StreamLost"  # nothing listens on the fake workers
    assert all(c["observedGeneration"] == am["metadata"]["generation"] for c in conds.values())
    table = crd.kubectl("get", "am", "-n", namespace).stdout
    assert table.split("\n")[0].split() == ["NAME", "READY", "TTFT-SLO", "P95-TTFT", "BUDGET",
                                            "QUALITY-LOSS", "AGE"]
    assert "2/2" in table and "500ms" in table

    crd.kubectl("scale", "-n", namespace, "am/chat", "--replicas=3")
    wait_until(lambda: crd.api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/chat-worker")
               ["spec"]["replicas"] == 3, 90, "the scale subresource to reach the Deployment")

    crd.api.delete(f"{AM_PATH.format(ns=namespace)}/chat")
    wait_until(lambda: not crd.api.exists(f"/apis/apps/v1/namespaces/{namespace}/deployments/chat-worker")
               and not crd.api.exists(f"/api/v1/namespaces/{namespace}/secrets/chat-worker-tls")
               and not crd.api.exists(f"/api/v1/namespaces/{namespace}/secrets/chat-api-key")
               and not crd.api.exists(f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/chat-worker"),
               120, "owned objects to be garbage-collected")


def test_each_model_gets_its_own_api_key_secret_mounted_and_a_network_policy(operator, crd, namespace):
    crd.api.post(AM_PATH.format(ns=namespace), model(replicas=1))
    dep = wait_until(lambda: crd.api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/chat-worker"),
                     180, "the worker Deployment")
    secret = crd.api.get(f"/api/v1/namespaces/{namespace}/secrets/chat-api-key")
    key = base64.b64decode(secret["data"]["api-key"])
    assert len(key) >= 43 and secret["metadata"]["ownerReferences"][0]["kind"] == "AdaptiveModel"
    pod = dep["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False  # as stored by the API server
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "DYNASPARSE_API_KEY_FILE", "value": "/etc/dynasparse/api-key/api-key"} in \
        pod["containers"][0]["env"]
    policy = crd.api.get(f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/chat-worker")
    rules = {r["ports"][0]["port"]: r for r in policy["spec"]["ingress"]}
    assert rules[8000]["from"] == [{"podSelector": {}}]  # the model's own namespace only
    assert rules[50051]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "dynasparse-system"}
    am = wait_until(lambda: (a := get_am(crd, namespace)) and (a.get("status") or {}).get("auth") and a,
                    60, "status.auth")
    assert am["status"]["auth"]["secretName"] == "chat-api-key"
    # the printed command really prints the key
    hint = am["status"]["auth"]["hint"]
    jsonpath = hint.split("-o jsonpath=")[1].split(" ")[0].strip("'")
    printed = crd.kubectl("get", "secret", "chat-api-key", "-n", namespace, "-o", f"jsonpath={jsonpath}").stdout
    assert base64.b64decode(printed) == key

    # a second reconcile (spec change) keeps the key: the Secret is created once, never rewritten
    crd.kubectl("patch", "am", "chat", "-n", namespace, "--type=merge", "-p", '{"spec":{"replicas":2}}')
    wait_until(lambda: crd.api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/chat-worker")
               ["spec"]["replicas"] == 2, 60, "the new spec to be reconciled")
    again = crd.api.get(f"/api/v1/namespaces/{namespace}/secrets/chat-api-key")
    assert base64.b64decode(again["data"]["api-key"]) == key


def test_a_spec_outside_the_allow_lists_creates_nothing_and_says_why(operator, crd, namespace):
    crd.api.post(AM_PATH.format(ns=namespace), model(
        name="miner", worker={"image": "docker.io/evil/miner:latest", "extraArgs": ["--api-key", "x"]},
        scheduling={"priorityClassName": "system-node-critical"}))
    am = wait_until(lambda: (a := get_am(crd, namespace, "miner")) and
                    (a.get("status") or {}).get("specRejected") and a, 180, "status.specRejected")
    rejected = am["status"]["specRejected"]
    assert "'docker.io/evil/miner:latest' is not allowed" in rejected
    assert "'system-node-critical' is not allowed" in rejected and "'--api-key' is not allowed" in rejected
    events = wait_until(lambda: [e for e in crd.api.get(f"/api/v1/namespaces/{namespace}/events")["items"]
                                 if e.get("reason") == "SpecRejected"], 30, "a SpecRejected event")
    assert events[0]["type"] == "Warning"
    ready = wait_until(lambda: conditions(get_am(crd, namespace, "miner")).get("Ready"), 60, "a Ready condition")
    assert ready["status"] == "False" and ready["reason"] == "SpecRejected"
    assert not crd.api.exists(f"/apis/apps/v1/namespaces/{namespace}/deployments/miner-worker")
    assert not crd.api.exists(f"/api/v1/namespaces/{namespace}/secrets/miner-api-key")


def test_names_that_cannot_become_service_names_are_rejected_with_the_limit(crd, namespace):
    too_long = "m" * 64
    result = crd.kubectl("apply", "-n", namespace, "-f", "-", check=False,
                         stdin=json.dumps(model(name=too_long)))
    assert result.returncode != 0 and "at most 63 characters" in result.stderr, result.stderr
    result = crd.kubectl("apply", "-n", namespace, "-f", "-", check=False,
                         stdin=json.dumps(model(name="1.chat")))
    assert result.returncode != 0 and "must start with a lowercase letter" in result.stderr, result.stderr
    crd.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(model(name="m" * 63)))
    result = crd.kubectl("apply", "-n", namespace, "-f", "-", check=False, stdin=json.dumps(
        model(name="chat", auth={"mode": "Disabled", "apiKeySecret": {"name": "k"}})))
    assert result.returncode != 0 and "auth.apiKeySecret needs auth.mode APIKey" in result.stderr


def test_spot_notice_drains_that_nodes_pod_adds_a_replica_and_budget_survives_restart(operator, crd, namespace):
    procs, start, _ = operator
    crd.api.post(AM_PATH.format(ns=namespace),
                 model(replicas=3, control={"intervalSeconds": 1, "replaceDisruptedPods": True}))
    wait_until(lambda: (get_am(crd, namespace).get("status") or {}).get("readyReplicas") == 3,
               240, "3 ready pods")
    pods = crd.api.get(f"/api/v1/namespaces/{namespace}/pods",
                       labelSelector="dynasparse.io/model=chat")["items"]
    doomed = pods[0]["spec"]["nodeName"]
    nodeops.taint(crd.api, doomed, SPOT)
    try:
        am = wait_until(lambda: (a := get_am(crd, namespace)) and
                        conditions(a).get("Disrupted", {}).get("status") == "True" and a,
                        60, "Disrupted=True")
        assert doomed in conditions(am)["Disrupted"]["message"]
        assert am["status"]["budget"] < 1.0 and "draining 1 pod" in am["status"]["lastDecision"]["reason"]
        events = wait_until(lambda: [e for e in crd.api.get(f"/api/v1/namespaces/{namespace}/events")["items"]
                                     if e.get("reason") == "Disruption"], 30, "a Disruption event")
        assert events[0]["message"].startswith(f"node {doomed} has {SPOT}: draining 1 pod")
        budget = am["status"]["budget"]
        wait_until(lambda: crd.api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/chat-worker")
                   ["spec"]["replicas"] == 4, 30, "a replacement replica requested before the node goes")

        procs[0].terminate()
        procs[0].wait(20)
        procs.append(start())
        wait_until(lambda: get_am(crd, namespace)["status"]["epoch"] != am["status"]["epoch"],
                   180, "the restarted operator to write status")
        assert get_am(crd, namespace)["status"]["budget"] == pytest.approx(budget), \
            "a restarted operator resumes the budget from status instead of jumping to dense"
    finally:
        nodeops.untaint(crd.api, doomed, SPOT)
