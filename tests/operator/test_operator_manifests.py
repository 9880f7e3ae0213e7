"""Spec -> Deployment, Service and worker TLS Secret (manifests.py), and the PKI behind the Secret."""

from __future__ import annotations

from cryptography import x509

from dynasparse_operator import manifests, pki
from dynasparse_operator.settings import WorkerSettings
from dynasparse_operator.spec import parse_spec

OWNER = manifests.Owner("chat", "team-a", "uid-1")
SPEC = parse_spec({"model": "default", "replicas": 3, "slo": {"ttftP95Ms": 500},
                   "quality": {"maxLoss": 0.2}, "calibration": "/cal/x.pt",
                   "worker": {"gpus": 1, "memory": "16Gi", "extraArgs": ["--max-batch", "32"]},
                   "scheduling": {"nodeSelector": {"karpenter.sh/capacity-type": "spot"},
                                  "tolerations": [{"key": "spot", "operator": "Exists"}]}})


def test_every_owned_object_points_at_the_model_as_controller():
    ca = pki.make_ca()
    leaf = pki.issue(ca, "w", server=True, dns_names=manifests.worker_dns_names(OWNER))
    for obj in (manifests.deployment(SPEC, OWNER, WorkerSettings()),
                manifests.service(OWNER, WorkerSettings()),
                manifests.tls_secret(OWNER, ca.cert_pem, leaf.cert_pem, leaf.key_pem)):
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref == {"apiVersion": "dynasparse.io/v1alpha1", "kind": "AdaptiveModel", "name": "chat",
                       "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}
        assert obj["metadata"]["namespace"] == "team-a"


def test_worker_runs_dynasparse_serve_with_control_port_and_mounted_tls():
    dep = manifests.deployment(SPEC, OWNER, WorkerSettings(image="img:1", control_port=6000))
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "img:1"
    args = container["args"]
    assert args[:3] == ["serve", "--model", "default"]
    assert args[args.index("--control-port") + 1] == "6000"
    assert args[args.index("--tls-dir") + 1] == "/etc/dynasparse/tls"
    assert args[args.index("--calibration") + 1] == "/cal/x.pt" and args[-2:] == ["--max-batch", "32"]
    assert container["volumeMounts"][0]["mountPath"] == "/etc/dynasparse/tls"
    assert pod["volumes"][0]["secret"]["secretName"] == "chat-worker-tls"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1", "memory": "16Gi"}
    assert pod["nodeSelector"] == {"karpenter.sh/capacity-type": "spot"}
    assert pod["tolerations"] == [{"key": "spot", "operator": "Exists"}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_deployment_selects_its_pods_and_rolls_without_losing_capacity():
    dep = manifests.deployment(SPEC, OWNER, WorkerSettings(), surge_replicas=2)
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert labels["app.kubernetes.io/component"] == "worker"
    assert labels["app.kubernetes.io/part-of"] == "dynasparse"  # the model's NetworkPolicy selects these
    assert dep["spec"]["replicas"] == 5
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert manifests.selector_string("chat") == ("app.kubernetes.io/component=worker,"
                                                 "app.kubernetes.io/part-of=dynasparse,"
                                                 "dynasparse.io/model=chat")


def test_service_exposes_http_and_control_ports():
    svc = manifests.service(OWNER, WorkerSettings())
    assert svc["metadata"]["name"] == "chat"
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"http": 8000, "control": 50051}


def test_worker_certificate_is_signed_by_the_operator_ca_for_the_service_name():
    ca = pki.make_ca()
    leaf = pki.issue(ca, "w", server=True, dns_names=manifests.worker_dns_names(OWNER))
    secret = manifests.tls_secret(OWNER, ca.cert_pem, leaf.cert_pem, leaf.key_pem)
    assert set(secret["stringData"]) == {"ca.crt", "server.crt", "server.key"}
    cert = x509.load_pem_x509_certificate(secret["stringData"]["server.crt"].encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "chat.team-a.svc" in names.get_values_for_type(x509.DNSName)
    assert pki.signed_by(leaf.cert_pem, ca) and not pki.signed_by(leaf.cert_pem, pki.make_ca())
    assert not pki.needs_renewal(leaf.cert_pem) and pki.needs_renewal(b"garbage")


def test_workers_without_a_named_calibration_use_their_own_cached_one():
    spec = parse_spec({"model": "default", "slo": {"ttftP95Ms": 500}, "quality": {"minBudget": 0.5}})
    args = manifests.worker_args(spec, WorkerSettings())
    assert args[args.index("--calibration") + 1] == "auto"


def test_a_worker_that_requests_cpus_sizes_its_thread_pool_to_them():
    def env_names(worker):
        spec = parse_spec({"model": "default", "slo": {"ttftP95Ms": 500}, "quality": {"minBudget": 0.4},
                           "worker": worker})
        (container,) = manifests.deployment(spec, OWNER, WorkerSettings())["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e for e in container["env"]}, container
    env, container = env_names({"cpu": "1500m"})
    assert env["OMP_NUM_THREADS"]["valueFrom"]["resourceFieldRef"] == {
        "containerName": "worker", "resource": "requests.cpu", "divisor": "1"}
    assert container["resources"]["requests"]["cpu"] == "1500m"
    env, _ = env_names({"gpus": 1})  # no CPU request: torch's own default
    assert "OMP_NUM_THREADS" not in env and "POD_IP" in env


def test_workers_hold_the_quality_bound_from_their_first_request_on():
    def env_of(quality):
        spec = parse_spec({"model": "default", "slo": {"ttftP95Ms": 500}, "quality": quality})
        (container,) = manifests.deployment(spec, OWNER, WorkerSettings())["spec"]["template"][
            "spec"]["containers"]
        return {e["name"]: e.get("value") for e in container["env"]}

    by_loss, by_budget = env_of({"maxLoss": 0.2}), env_of({"minBudget": 0.55})
    assert by_loss["DYNASPARSE_MAX_LOSS"] == "0.2" and "DYNASPARSE_MIN_BUDGET" not in by_loss
    assert by_budget["DYNASPARSE_MIN_BUDGET"] == "0.55" and "DYNASPARSE_MAX_LOSS" not in by_budget
