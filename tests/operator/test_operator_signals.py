"""Node and pod objects -> pressure, disruption and cordon facts (signals.py), with configurable keys."""

from __future__ import annotations

from dynasparse_operator.settings import SignalSettings
from dynasparse_operator.signals import effective_signals, node_facts, pod_facts, pod_ready
from dynasparse_operator.spec import SignalOverrides

KEYS = SignalSettings()


def node(name="n1", taints=(), conditions=None, labels=None, unschedulable=False):
    conditions = conditions or {"Ready": "True", "MemoryPressure": "False"}
    return {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"taints": [{"key": k, "effect": "NoSchedule"} for k in taints],
                     "unschedulable": unschedulable},
            "status": {"conditions": [{"type": t, "status": s} for t, s in conditions.items()]}}


def pod(name, node_name="n1", ready=True, conditions=(), deleting=False):
    conds = [{"type": "Ready", "status": "True" if ready else "False"}, *conditions]
    meta = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": node_name},
            "status": {"phase": "Running", "podIP": "127.0.0.5", "conditions": conds}}


def test_memory_pressure_condition_is_pressure():
    facts = node_facts(node(conditions={"Ready": "True", "MemoryPressure": "True"}), KEYS)
    assert facts.pressure == ("MemoryPressure",) and not facts.disruption and not facts.cordoned


def test_pressure_taint_counts_once_beside_its_condition():
    facts = node_facts(node(taints=["node.kubernetes.io/disk-pressure"],
                            conditions={"Ready": "True", "DiskPressure": "True"}), KEYS)
    assert facts.pressure == ("DiskPressure", "node.kubernetes.io/disk-pressure")


def test_every_default_spot_notice_taint_is_a_disruption():
    for key in KEYS.disruption_taints:
        assert node_facts(node(taints=[key]), KEYS).disruption == (key,)


def test_gke_maintenance_label_is_a_disruption_and_spot_labels_mark_spot():
    facts = node_facts(node(labels={"cloud.google.com/scheduled-maintenance-time": "1700000000",
                                    "cloud.google.com/gke-spot": "true"}), KEYS)
    assert facts.disruption == ("cloud.google.com/scheduled-maintenance-time",)
    assert facts.spot
    assert not node_facts(node(labels={"karpenter.sh/capacity-type": "on-demand"}), KEYS).spot


def test_cordon_by_flag_or_taint_and_not_ready_node_lose_their_pods():
    assert node_facts(node(unschedulable=True), KEYS).losing_pods == ("cordoned",)
    assert node_facts(node(taints=["node.kubernetes.io/unschedulable"]), KEYS).cordoned
    facts = node_facts(node(conditions={"Ready": "Unknown"}), KEYS)
    assert facts.losing_pods == ("Ready=Unknown",)


def test_unknown_taints_mean_nothing_and_keys_are_configurable():
    plain = node(taints=["example.com/custom-notice"])
    assert node_facts(plain, KEYS).losing_pods == ()
    keys = effective_signals(KEYS, SignalOverrides(disruption_taints=("example.com/custom-notice",)))
    assert node_facts(plain, keys).disruption == ("example.com/custom-notice",)
    assert keys.pressure_conditions == KEYS.pressure_conditions


def test_pods_on_a_noticed_node_carry_the_notice_and_pressure_carries_over():
    nodes = {"n1": node_facts(node("n1", taints=["karpenter.sh/disrupted"]), KEYS),
             "n2": node_facts(node("n2", conditions={"Ready": "True", "PIDPressure": "True"}), KEYS)}
    facts = {f.name: f for f in pod_facts([pod("a", "n1"), pod("b", "n2")], nodes, KEYS)}
    assert facts["a"].disruption == ("karpenter.sh/disrupted",)
    assert facts["b"].pressure == ("PIDPressure",) and not facts["b"].disruption


def test_disruption_target_condition_drains_that_pod_only():
    cond = {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
    facts = {f.name: f for f in pod_facts([pod("a", conditions=[cond]), pod("b")], {}, KEYS)}
    assert facts["a"].disruption == ("DisruptionTarget(EvictionByEvictionAPI)",)
    assert facts["b"].disruption == ()


def test_unready_and_deleting_pods_are_not_steered():
    facts = pod_facts([pod("a", ready=False), pod("b", deleting=True), pod("c")], {}, KEYS)
    assert [f.name for f in facts] == ["c"]
    assert not pod_ready(pod("b", deleting=True))
