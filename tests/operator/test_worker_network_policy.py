"""The NetworkPolicy the operator renders next to each model's workers: control port for the
operator's pods only, HTTP port for the configured peers only (never everyone by accident)."""

from __future__ import annotations

import yaml

from dynasparse_operator import manifests, network_policy
from dynasparse_operator.settings import NetworkPolicySettings, WorkerSettings, load_settings

OWNER = manifests.Owner("chat", "team-a", "uid-1")


def render(policy: NetworkPolicySettings) -> dict:
    return network_policy.network_policy(OWNER, WorkerSettings(), policy, "dynasparse-system")


def rule_for(obj: dict, port: int) -> dict | None:
    return next((r for r in obj["spec"]["ingress"] if r["ports"][0]["port"] == port), None)


def test_only_the_operators_pods_reach_the_control_port_of_exactly_this_models_workers():
    obj = render(NetworkPolicySettings())
    assert obj["metadata"]["namespace"] == "team-a" and obj["metadata"]["name"] == "chat-worker"
    assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert obj["spec"]["podSelector"]["matchLabels"] == manifests.selector("chat")
    assert obj["spec"]["policyTypes"] == ["Ingress"]
    (peer,) = rule_for(obj, 50051)["from"]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "dynasparse-system"}}
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"


def test_http_is_open_to_the_models_namespace_by_default_and_to_nobody_when_the_list_is_empty():
    assert rule_for(render(NetworkPolicySettings()), 8000)["from"] == [{"podSelector": {}}]
    closed = render(NetworkPolicySettings(http_from=[]))
    assert rule_for(closed, 8000) is None  # no rule for the port: denied, not opened to all
    assert len(closed["spec"]["ingress"]) == 1


def test_everyone_reaches_http_only_when_asked_explicitly():
    rule = rule_for(render(NetworkPolicySettings(http_from=[], http_from_everywhere=True)), 8000)
    assert rule == {"ports": [{"protocol": "TCP", "port": 8000}]}


def test_peers_and_operator_labels_come_from_the_settings_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"networkPolicy": {
        "httpFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}],
        "operatorLabels": {"app.kubernetes.io/instance": "dynasparse"}}}))
    policy = load_settings({"DYNASPARSE_CONFIG": str(path)}).network_policy
    obj = render(policy)
    assert rule_for(obj, 8000)["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress"}
    assert rule_for(obj, 50051)["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/instance": "dynasparse"}


def test_a_mapping_setting_given_as_a_string_is_a_user_error(tmp_path):
    import pytest

    from dynasparse_operator.errors import UserError

    path = tmp_path / "config.yaml"
    path.write_text("networkPolicy:\n  operatorLabels: operator\n")
    with pytest.raises(UserError, match="networkPolicy.operatorLabels"):
        load_settings({"DYNASPARSE_CONFIG": str(path)})
