"""The Helm chart: `helm lint` (with its values schema) and `helm template` render what the design
asks for — hardened operator pod, least-privilege RBAC, signal keys from values, ServiceMonitor only
when its API exists. Needs the helm binary that scripts/setup.sh builds (no cluster)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from dynasparse.devcluster import binaries
from dynasparse.devcluster.errors import DevClusterError

CHART = Path(__file__).resolve().parents[2] / "charts" / "dynasparse"


@pytest.fixture(scope="module")
def helm() -> str:
    try:
        return str(binaries.locate().helm)
    except DevClusterError as exc:
        pytest.fail(str(exc), pytrace=False)


def run_helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}")
    return result


def render_docs(helm: str, *args: str) -> list[dict]:
    out = run_helm(helm, "template", "rel", str(CHART), "--namespace", "ml-system", "--include-crds", *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def render(helm: str, *args: str) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in render_docs(helm, *args)}


def test_the_chart_lints_cleanly_in_strict_mode(helm):
    result = run_helm(helm, "lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in result.stdout


def test_values_that_break_the_schema_are_refused(helm):
    result = run_helm(helm, "template", "rel", str(CHART), "--set", "config.worker.controlPort=70000", check=False)
    assert result.returncode != 0 and "controlPort" in result.stderr


def test_the_operator_runs_hardened_with_its_config_and_probes(helm):
    objs = render(helm)
    pod = objs[("Deployment", "rel-dynasparse-operator")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["args"][0] == "operator"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in container["env"]}
    config_path = env["DYNASPARSE_CONFIG"]["value"]
    mount = next(m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"]))
    config = yaml.safe_load(objs[("ConfigMap", "rel-dynasparse-operator-config")]["data"]["config.yaml"])
    assert mount["name"] == "config"
    assert "aws-node-termination-handler/spot-itn" in config["signals"]["disruptionTaints"]
    assert "karpenter.sh/capacity-type=spot" in config["signals"]["spotLabels"]
    assert env["DYNASPARSE_POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_the_operators_config_matches_the_operators_settings_keys(helm):
    settings = pytest.importorskip("dynasparse_operator.settings")
    config = yaml.safe_load(render(helm)[("ConfigMap", "rel-dynasparse-operator-config")]["data"]["config.yaml"])
    settings.apply_mapping(settings.OperatorSettings(), config, "chart values")  # raises on unknown keys


def test_signal_keys_are_configurable_from_values(helm):
    objs = render(helm, "--set", "config.signals.disruptionTaints={example.com/going-away}")
    config = yaml.safe_load(objs[("ConfigMap", "rel-dynasparse-operator-config")]["data"]["config.yaml"])
    assert config["signals"]["disruptionTaints"] == ["example.com/going-away"]


def granted_by(docs: list[dict], kind: str) -> dict[tuple[str, str | None], set[tuple[str, str, str, tuple]]]:
    """(name, namespace) -> {(apiGroup, resource, verb, resourceNames)} of every role of `kind`."""
    out = {}
    for obj in docs:
        if obj["kind"] == kind:
            out[(obj["metadata"]["name"], obj["metadata"].get("namespace"))] = {
                (g, r, v, tuple(rule.get("resourceNames") or ())) for rule in obj["rules"]
                for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def test_rbac_is_least_privilege(helm):
    docs = render_docs(helm)
    granted = set().union(*granted_by(docs, "ClusterRole").values(), *granted_by(docs, "Role").values())
    plain = {(g, r, v) for g, r, v, names in granted if not names}
    assert ("dynasparse.io", "adaptivemodels/status", "patch") in plain
    assert ("apps", "deployments", "create") in plain
    assert ("networking.k8s.io", "networkpolicies", "create") in plain
    assert ("", "nodes", "watch") in plain
    assert not any(v in ("*", "escalate", "bind", "impersonate") or r == "*" for _, r, v in plain)
    assert not any(r in ("pods", "nodes") and v in ("delete", "create", "update", "patch") for _, r, v in plain)
    assert ("", "pods/eviction", "create") not in plain
    # owner references collect what the operator made: nothing of it is ever deleted by hand
    assert not any(v in ("delete", "deletecollection") for _, _, v in plain)
    # Secrets: never listed or watched; read and patched by name in the release namespace
    assert not any(r == "secrets" and v in ("list", "watch", "update") for _, r, v in plain)
    ca_rules = granted_by(docs, "Role")[("rel-dynasparse-operator-ca", "ml-system")]
    assert ("", "secrets", "get", ("dynasparse-ca",)) in ca_rules
    assert ("", "secrets", "create", ()) in ca_rules


def test_watching_named_namespaces_grants_roles_there_and_nothing_namespaced_cluster_wide(helm):
    docs = render_docs(helm, "--set", "operator.watchNamespaces={team-a,team-b}")
    roles = granted_by(docs, "Role")
    for ns in ("team-a", "team-b"):
        assert ("apps", "deployments", "create", ()) in roles[("rel-dynasparse-operator", ns)]
    bindings = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "RoleBinding"}
    assert {"team-a", "team-b", "ml-system"} <= set(bindings)
    assert bindings["team-a"]["subjects"][0]["namespace"] == "ml-system"
    namespaced = {"adaptivemodels", "deployments", "services", "secrets", "pods", "networkpolicies", "events"}
    (cluster_rules,) = granted_by(docs, "ClusterRole").values()
    assert not any(r in namespaced for _, r, _, _ in cluster_rules), cluster_rules
    assert ("", "nodes", "list", ()) in cluster_rules


def test_the_operator_is_told_its_own_pod_labels_as_the_only_peers_of_the_control_port(helm):
    """The chart renders no worker NetworkPolicy itself (the operator makes one per model, where
    the workers run); it hands the operator the peers from values."""
    objs = render(helm)
    assert not any(kind == "NetworkPolicy" for kind, _ in objs)
    config = yaml.safe_load(objs[("ConfigMap", "rel-dynasparse-operator-config")]["data"]["config.yaml"])
    pod_labels = objs[("Deployment", "rel-dynasparse-operator")]["spec"]["template"]["metadata"]["labels"]
    assert config["networkPolicy"]["operatorLabels"].items() <= pod_labels.items()
    assert config["networkPolicy"]["httpFrom"] == [{"podSelector": {}}]  # the model's namespace only
    assert config["networkPolicy"]["httpFromEverywhere"] is False
    assert config["worker"]["allowedImages"] == ["ghcr.io/dynasparse/dynasparse-worker"]


def test_the_service_monitor_appears_only_when_asked_and_its_api_exists(helm):
    assert not any(k == "ServiceMonitor" for k, _ in render(helm, "--set", "metrics.serviceMonitor.enabled=true"))
    with_api = render(helm, "--set", "metrics.serviceMonitor.enabled=true",
                      "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
    assert ("ServiceMonitor", "rel-dynasparse-operator") in with_api
    assert not any(k == "ServiceMonitor" for k, _ in render(helm, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"))


def test_the_crd_ships_with_the_chart(helm):
    assert ("CustomResourceDefinition", "adaptivemodels.dynasparse.io") in render(helm)


def test_peering_renders_its_crd_and_peering_object_and_is_required_for_several_replicas(helm):
    objs = render(helm, "--set", "operator.peering=dynasparse", "--set", "operator.replicas=2")
    assert ("CustomResourceDefinition", "clusterkopfpeerings.kopf.dev") in objs
    peering = objs[("ClusterKopfPeering", "dynasparse")]
    assert "post-install" in peering["metadata"]["annotations"]["helm.sh/hook"]  # after its CRD exists
    args = objs[("Deployment", "rel-dynasparse-operator")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--peering=dynasparse" in args
    refused = run_helm(helm, "template", "rel", str(CHART), "--set", "operator.replicas=2", check=False)
    assert refused.returncode != 0 and "operator.peering" in refused.stderr
