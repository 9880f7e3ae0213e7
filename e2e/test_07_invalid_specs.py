"""Scenario 7: invalid AdaptiveModel specs are rejected by the API server (the CRD's schema and CEL
rules, installed by the chart) with a message a person can act on."""

from __future__ import annotations

import pytest
import yaml

VALID = {"model": "default", "replicas": 1, "slo": {"ttftP95Ms": 500}, "quality": {"maxLoss": 0.3}}


def manifest(name: str, spec: dict) -> str:
    return yaml.safe_dump({"apiVersion": "dynasparse.io/v1alpha1", "kind": "AdaptiveModel",
                           "metadata": {"name": name}, "spec": spec})


def with_(path: str, value) -> dict:
    """VALID with one field replaced (value None removes it)."""
    spec = yaml.safe_load(yaml.safe_dump(VALID))
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return spec


INVALID = [
    ("no-model", with_("model", None), "spec.model: Required value"),
    ("negative-replicas", with_("replicas", -1), "spec.replicas: Invalid value: -1"),
    ("no-slo-target", with_("slo", {}), "set slo.ttftP95Ms, slo.interTokenP95Ms, or both"),
    ("two-floors", with_("quality", {"maxLoss": 0.3, "minBudget": 0.5}),
     "set exactly one of quality.maxLoss and quality.minBudget"),
    ("budget-over-one", with_("quality", {"minBudget": 1.5}), "spec.quality.minBudget"),
    ("floor-above-ceiling", {**with_("quality", {"minBudget": 0.8}), "control": {"maxBudget": 0.5}},
     "quality.minBudget must not exceed control.maxBudget"),
    ("bad-pull-policy", with_("worker", {"imagePullPolicy": "Sometimes"}), "Unsupported value: \"Sometimes\""),
    ("bad-memory", with_("worker", {"memory": "lots"}), "spec.worker.memory"),
]


@pytest.mark.parametrize("name, spec, message", INVALID, ids=[case[0] for case in INVALID])
def test_an_invalid_spec_is_rejected_with_a_readable_message(chart_installed, namespace, name, spec, message):
    result = chart_installed.kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest(name, spec), check=False)
    assert result.returncode != 0, f"the API server accepted an invalid AdaptiveModel ({name})"
    assert "is invalid" in result.stderr and message in result.stderr, result.stderr
    assert not chart_installed.api.exists(f"/apis/dynasparse.io/v1alpha1/namespaces/{namespace}/adaptivemodels/{name}")


def test_a_valid_spec_is_accepted_and_defaulted(chart_installed, namespace):
    chart_installed.kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest("ok", VALID))
    am = chart_installed.api.get(f"/apis/dynasparse.io/v1alpha1/namespaces/{namespace}/adaptivemodels/ok")
    assert am["spec"]["control"]["intervalSeconds"] == 2  # schema default applied by the API server
    assert am["spec"]["worker"]["gpus"] == 1
