"""Worker pods as the operator renders them: the restricted profile, writable caches on a read-only
root, the API key mounted from a Secret, and names that fit every place a model's name goes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dynasparse_operator import api_key, manifests, pki
from dynasparse_operator.settings import WorkerSettings
from dynasparse_operator.spec import parse_spec

OWNER = manifests.Owner("chat", "team-a", "uid-1")
BASE = {"model": "default", "slo": {"ttftP95Ms": 500}, "quality": {"maxLoss": 0.2}}
CRD = Path(__file__).resolve().parents[2] / "charts/dynasparse/crds/adaptivemodels.yaml"


def pod_of(spec: dict, settings: WorkerSettings | None = None) -> dict:
    return manifests.deployment(parse_spec(spec), OWNER, settings or WorkerSettings())["spec"]["template"]["spec"]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_worker_pods_run_under_the_restricted_profile_without_a_service_account_token():
    pod = pod_of(BASE)
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"} and sc["privileged"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False


def test_every_path_the_worker_writes_is_a_mounted_volume():
    settings = WorkerSettings(cache_volume={"persistentVolumeClaim": {"claimName": "models"}})
    pod = pod_of(BASE, settings)
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    env = env_of(container)
    writable = [env["DYNASPARSE_CACHE_DIR"], env["HF_HOME"], env["TRITON_CACHE_DIR"],
                env["TORCHINDUCTOR_CACHE_DIR"], env["TMPDIR"]]
    for path in writable:
        mount = next(m for m in mounts if path == m or path.startswith(m + "/"))
        assert not any(mm["readOnly"] for mm in container["volumeMounts"]
                       if mm["mountPath"] == mount and "readOnly" in mm), path
    assert volumes[mounts["/tmp"]] == {"name": "tmp", "emptyDir": {}}
    assert volumes[mounts[settings.cache_dir]]["persistentVolumeClaim"] == {"claimName": "models"}
    assert "emptyDir" in {k for v in pod_of(BASE)["volumes"] if v["name"] == "cache" for k in v}


def test_the_api_key_is_on_by_default_from_the_models_own_secret_as_a_file():
    pod = pod_of(BASE)
    (container,) = pod["containers"]
    volume = next(v for v in pod["volumes"] if v["name"] == "api-key")["secret"]
    assert volume["secretName"] == "chat-api-key"
    assert volume["items"] == [{"key": "api-key", "path": "api-key"}]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-key")
    assert "subPath" not in mount  # a subPath mount would never see a rotated key
    assert env_of(container)["DYNASPARSE_API_KEY_FILE"] == f"{mount['mountPath']}/api-key"
    assert "--api-key" not in container["args"]  # never on the command line (visible in ps)


def test_a_users_own_secret_is_mounted_under_its_key_and_disabled_means_no_key_at_all():
    own = pod_of({**BASE, "auth": {"apiKeySecret": {"name": "team-key", "key": "token"}}})
    volume = next(v for v in own["volumes"] if v["name"] == "api-key")["secret"]
    assert volume["secretName"] == "team-key" and volume["items"] == [{"key": "token", "path": "api-key"}]
    assert not api_key.operator_made(parse_spec({**BASE, "auth": {"apiKeySecret": {"name": "team-key"}}}))
    off = pod_of({**BASE, "auth": {"mode": "Disabled"}})
    assert not any(v["name"] == "api-key" for v in off["volumes"])
    assert "DYNASPARSE_API_KEY_FILE" not in env_of(off["containers"][0])


def test_the_operator_made_key_is_random_owned_by_the_model_and_its_place_is_in_status():
    spec = parse_spec(BASE)
    first, second = api_key.new_key(), api_key.new_key()
    assert first != second and len(first) >= 43  # 32 random bytes, URL-safe base64
    secret = api_key.secret(OWNER, spec, first)
    assert secret["metadata"]["name"] == "chat-api-key" and secret["stringData"] == {"api-key": first}
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    status = api_key.status(OWNER, spec)
    assert status["secretName"] == "chat-api-key" and status["secretKey"] == "api-key"
    assert "kubectl get secret chat-api-key -n team-a -o jsonpath='{.data.api-key}'" in status["hint"]
    assert api_key.status(OWNER, parse_spec({**BASE, "auth": {"mode": "Disabled"}}))["secretName"] is None


def test_the_name_limit_in_the_crd_is_the_one_the_names_need():
    crd = yaml.safe_load(CRD.read_text())
    rules = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    assert any(f"<= {manifests.MAX_NAME_LENGTH}" in r["rule"] for r in rules)
    assert any(manifests.NAME_PATTERN in r["rule"] for r in rules)
    longest = "m" + "x" * (manifests.MAX_NAME_LENGTH - 1)
    owner = manifests.Owner(longest, "n" * 63, "uid")
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", manifests.service_name(longest))  # DNS-1035 label
    assert all(len(v) <= 63 for v in manifests.selector(longest).values())  # label values
    for name in (manifests.deployment_name(longest), manifests.tls_secret_name(longest),
                 manifests.api_key_secret_name(longest, parse_spec(BASE))):
        assert len(name) <= 253  # DNS subdomains
    # the worker certificate of the longest name in the longest namespace can still be issued
    ca = pki.make_ca()
    leaf = pki.issue(ca, manifests.worker_common_name(owner), server=True,
                     dns_names=manifests.worker_dns_names(owner))
    assert pki.signed_by(leaf.cert_pem, ca)


@pytest.mark.parametrize("mode", ["Sometimes", ""])
def test_an_unknown_auth_mode_is_refused_for_specs_built_by_hand(mode):
    from dynasparse_operator.errors import UserError
    if mode:
        with pytest.raises(UserError, match="spec.auth.mode"):
            parse_spec({**BASE, "auth": {"mode": mode}})
    else:
        assert parse_spec({**BASE, "auth": {}}).auth.mode == "APIKey"
