"""The process kubelet's pure decisions: which containers run as processes, with which argv,
environment and paths."""

import base64

import pytest

from dynasparse.devcluster.kubelet import podspec

POD = {
    "metadata": {"name": "w-0", "namespace": "ml", "uid": "u-1", "labels": {"app": "w"},
               "annotations": {"a": "1"}},
    "spec": {"nodeName": "gpu-0", "serviceAccountName": "worker"},
}
CONFIG = {"data": {"MODEL": "default", "LEVEL": "debug"}}
SECRET = {"data": {"token": base64.b64encode(b"s3cret").decode()}}


def lookup(kind, namespace, name):
    return {("ConfigMap", "cfg"): CONFIG, ("Secret", "sec"): SECRET}.get((kind, name))


@pytest.mark.parametrize("image, ours", [
    ("ghcr.io/dynasparse/dynasparse-worker:0.1.0", True),
    ("dynasparse-operator", True),
    ("registry:5000/team/dynasparse@sha256:abc", True),
    ("nginx:1.27", False),
    ("ghcr.io/dynasparse/nginx:1", False),  # the repository's name decides, not its path
])
def test_only_images_named_dynasparse_run_as_processes(image, ours):
    assert podspec.runs_as_process(image) is ours


def test_container_args_are_the_dynasparse_subcommand():
    argv = podspec.container_argv({"args": ["serve", "--port", "8000"]}, "/py")
    assert argv == ["/py", "-m", "dynasparse", "serve", "--port", "8000"]


def test_a_dynasparse_or_python_command_maps_onto_this_interpreter():
    assert podspec.container_argv({"command": ["/usr/local/bin/dynasparse", "operator"]}, "/py") == \
        ["/py", "-m", "dynasparse", "operator"]
    assert podspec.container_argv({"command": ["python3", "-m", "http.server"], "args": ["9"]}, "/py") == \
        ["/py", "-m", "http.server", "9"]


def test_env_resolves_configmaps_secrets_and_downward_api_in_order():
    container = {
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "URL", "value": "http://$(POD_IP):8000/$(MISSING)/$$x"},
            {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": True}}},
        ],
    }
    env = podspec.container_env(POD, container, "127.9.1.1", lookup)
    assert env["CFG_MODEL"] == "default" and env["TOKEN"] == "s3cret"
    assert env["POD_IP"] == "127.9.1.1" and env["NODE"] == "gpu-0" and env["APP"] == "w"
    assert env["URL"] == "http://127.9.1.1:8000/$(MISSING)/$x"
    assert "OPT" not in env


def test_cpu_through_the_downward_api_is_divided_and_rounded_up_as_the_kubelet_does():
    def cpu_env(request, divisor=None):
        ref = {"resource": "requests.cpu", **({"divisor": divisor} if divisor else {})}
        container = {"resources": {"requests": {"cpu": request}},
                     "env": [{"name": "N", "valueFrom": {"resourceFieldRef": ref}}]}
        return podspec.container_env(POD, container, "127.9.1.1", lookup)["N"]
    assert cpu_env("500m") == "1" and cpu_env("2") == "2" and cpu_env("1500m", "1") == "2"
    assert cpu_env("250m", "1m") == "250"


def test_a_missing_required_secret_keeps_the_pod_waiting():
    container = {"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]}
    with pytest.raises(podspec.NotReadyYet, match="Secret ml/absent not found"):
        podspec.container_env(POD, container, "127.9.1.1", lookup)


def test_mount_paths_in_args_and_env_are_rewritten_to_the_pod_directory():
    container = {
        "args": ["serve", "--tls-dir", "/etc/dynasparse/tls", "--config=/etc/dynasparse/config/c.yaml",
                 "/etc/dynasparse/tlsx"],
        "env": [{"name": "DYNASPARSE_CONFIG", "value": "/etc/dynasparse/config/c.yaml"}],
        "volumeMounts": [{"name": "tls", "mountPath": "/etc/dynasparse/tls"},
                         {"name": "config", "mountPath": "/etc/dynasparse/config/"}],
    }
    argv, env = podspec.process_spec(POD, container, "127.9.1.1", "/py", lookup,
                                     {"tls": "/run/p/tls", "config": "/run/p/config"})
    assert argv[3:] == ["serve", "--tls-dir", "/run/p/tls", "--config=/run/p/config/c.yaml",
                        "/etc/dynasparse/tlsx"]
    assert env["DYNASPARSE_CONFIG"] == "/run/p/config/c.yaml"


def test_wildcard_listen_addresses_are_bound_to_the_pod_ip():
    argv = podspec.rebind_wildcard(["--host", "0.0.0.0", "--liveness=http://0.0.0.0:8080/healthz"], "127.9.1.2")
    assert argv == ["--host", "127.9.1.2", "--liveness=http://127.9.1.2:8080/healthz"]


def test_a_rewritten_path_is_not_rewritten_again_by_a_shorter_mount():
    mounts = {"/tmp": "/tmp/c/pods/p/volumes/tmp", "/etc/cfg": "/tmp/c/pods/p/volumes/cfg"}
    assert podspec.rewrite_paths("/etc/cfg/config.yaml", mounts) == "/tmp/c/pods/p/volumes/cfg/config.yaml"
    assert podspec.rewrite_paths("--scratch=/tmp/x", mounts) == "--scratch=/tmp/c/pods/p/volumes/tmp/x"
