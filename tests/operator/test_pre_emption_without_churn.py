"""Pre-emption without churn, on the operator's side: whether draining pods get replacements
(replaceDisruptedPods, unset: the notice's lead against the pods' measured start), where that
lead comes from, and the survivors' budget holding the notice's cut until the doomed pods are gone."""

from __future__ import annotations

import datetime as dt
import itertools
import pathlib

import pytest
import yaml

from dynasparse_operator import manifests, pki
from dynasparse_operator.control_law import decide
from dynasparse_operator.daemon import ControlLoop, LoopDeps, ModelRuntime
from dynasparse_operator.grpc_client import ClientTls
from dynasparse_operator.errors import UserError
from dynasparse_operator.law_types import LawParams, LawState, PodFacts, PodReport
from dynasparse_proto.contract import LoadSignals
from dynasparse_operator.replacement import decide_replacement, load_seconds, start_seconds
from dynasparse_operator.settings import OperatorSettings, load_settings
from dynasparse_operator.spec import parse_spec

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPOT = "aws-node-termination-handler/spot-itn"
LEADS = {SPOT: 120.0}
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def pod(name: str, started_after_s: float | None, *, ready: bool = True) -> dict:
    """A pod body as the API server returns it: created at T0, Ready `started_after_s` later."""
    stamp = lambda t: (T0 + dt.timedelta(seconds=t)).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    conditions = [] if started_after_s is None else [
        {"type": "Ready", "status": "True" if ready else "False",
         "lastTransitionTime": stamp(started_after_s)}]
    return {"metadata": {"name": name, "creationTimestamp": stamp(0)},
            "spec": {"nodeName": f"n-{name}"},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "conditions": conditions}}


DOOMED = [PodFacts("a", "n-a", disruption=(SPOT, "cordoned"))]


# --- replacing, or not -----------------------------------------------------------------------------

def test_an_unset_replace_setting_replaces_when_the_notice_outlasts_the_slowest_pod_start():
    chosen = decide_replacement(None, DOOMED, [pod("a", 40), pod("b", 95)], LEADS)
    assert chosen.on and "120 s" in chosen.reason and "95 s" in chosen.reason


def test_an_unset_replace_setting_leaves_the_load_to_the_survivors_when_a_start_takes_longer():
    chosen = decide_replacement(None, DOOMED, [pod("a", 40), pod("b", 130)], LEADS)
    assert not chosen.on and "survivors absorb the load" in chosen.reason


def test_a_notice_without_a_known_lead_never_starts_replacements():
    cordoned = [PodFacts("a", "n-a", disruption=("cordoned",))]
    chosen = decide_replacement(None, cordoned, [pod("b", 5)], LEADS)
    assert not chosen.on and "noticeLeadSeconds" in chosen.reason


def test_without_a_ready_pod_to_measure_no_replacement_is_started():
    assert not decide_replacement(None, DOOMED, [pod("b", None)], LEADS).on


def test_the_spec_setting_wins_over_the_notice_either_way():
    assert decide_replacement(True, DOOMED, [pod("b", 500)], {}).on
    assert not decide_replacement(False, DOOMED, [pod("b", 5)], LEADS).on


def test_replacements_once_started_stay_until_the_draining_pods_are_gone():
    slow_replacement_now_ready = [pod("b", 30), pod("c", 300)]
    assert decide_replacement(None, DOOMED, slow_replacement_now_ready, LEADS, replacing=True).on
    assert not decide_replacement(None, [], slow_replacement_now_ready, LEADS, replacing=True).on


def test_a_pod_start_is_measured_from_creation_to_ready_and_only_on_ready_pods():
    assert start_seconds(pod("a", 42)) == pytest.approx(42.0)
    assert start_seconds(pod("a", 42, ready=False)) is None
    assert load_seconds([pod("a", 42), pod("b", 61), pod("c", 10, ready=False)]) == pytest.approx(61.0)


# --- where the settings come from ------------------------------------------------------------------

def test_an_absent_replace_setting_parses_as_unset_and_the_crd_gives_it_no_default():
    spec = {"model": "m", "slo": {"ttftP95Ms": 500}, "quality": {"minBudget": 0.3}}
    assert parse_spec(spec).control.replace_disrupted_pods is None
    assert parse_spec({**spec, "control": {"replaceDisruptedPods": False}}) \
        .control.replace_disrupted_pods is False
    crd = yaml.safe_load((ROOT / "charts/dynasparse/crds/adaptivemodels.yaml").read_text())
    control = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] \
        ["properties"]["control"]["properties"]["replaceDisruptedPods"]
    assert "default" not in control


def test_the_charts_notice_leads_reach_the_operator_through_its_environment_variable():
    chart = yaml.safe_load((ROOT / "charts/dynasparse/values.yaml").read_text())["noticeLeadSeconds"]
    assert load_settings({}).signals.notice_lead_s == {k: float(v) for k, v in chart.items()}
    s = load_settings({"DYNASPARSE_NOTICE_LEAD_SECONDS": '{"example.com/notice": 45}'})
    assert s.signals.notice_lead_s == {"example.com/notice": 45.0}


def test_a_notice_lead_that_is_not_a_number_of_seconds_is_a_user_error_naming_the_key():
    with pytest.raises(UserError, match=r"example.com/notice.*noticeLeadSeconds"):
        load_settings({"DYNASPARSE_NOTICE_LEAD_SECONDS": '{"example.com/notice": "soon"}'})
    with pytest.raises(UserError, match="DYNASPARSE_NOTICE_LEAD_SECONDS"):
        load_settings({"DYNASPARSE_NOTICE_LEAD_SECONDS": "not json"})


# --- the survivors absorb the load until the doomed pods are gone --------------------------------

PARAMS = LawParams(ttft_slo_ms=500, min_budget=0.3, interval_s=1.0)
THREE = [PodFacts("a", "n1", disruption=(SPOT,)), PodFacts("b", "n2"), PodFacts("c", "n3")]


def test_without_load_signals_the_survivors_keep_the_notices_cut_until_the_doomed_pod_is_gone():
    state, pods, budgets = LawState(budget=0.9), THREE, []
    for i in range(30):
        now = 10.0 + i
        if i == 20:
            pods = THREE[1:]  # the doomed pod is deleted
        calm = {p.name: PodReport(p.name, received_at=now, ttft_p95_ms=150.0, samples=40)
                for p in pods}
        decision = decide(calm, pods, PARAMS, state, now)
        state = decision.state
        budgets.append(decision.to_budget)
    assert budgets[0] == pytest.approx(0.6)  # 0.9 × 2/3: two survivors carry three pods' load
    assert max(budgets[:20]) == pytest.approx(0.6), "relaxed on samples from before the notice"
    assert budgets[-1] > 0.6  # gone: the survivors' own samples steer again


CURVE = ((0.3, 2.08), (0.5, 1.56), (0.75, 1.18), (1.0, 1.0))


def _loaded(name: str, rate: float, at: float) -> PodReport:
    return PodReport(name, received_at=at, ttft_p95_ms=100.0, samples=50, load=LoadSignals(
        arrival_rate_short=rate, arrival_rate_long=rate, work_per_request_s=4.1, slots=32,
        speed_curve=CURVE))


def test_with_load_signals_the_doomed_pods_load_counts_against_the_survivors_while_it_drains():
    per_pod = 5.0
    before = decide({p: _loaded(p, per_pod, 10.0) for p in "abc"},
                    [PodFacts(p) for p in "abc"], PARAMS, LawState(), 10.0)
    state, levels = before.state, []
    for i in range(30):  # the doomed pod's traffic moves to the survivors over a long window
        now = 11.0 + i
        moved = min(1.0, i / 10.0) * per_pod
        reports = {"a": _loaded("a", per_pod - moved, now),
                   **{p: _loaded(p, per_pod + moved / 2, now) for p in "bc"}}
        decision = decide(reports, THREE, PARAMS, state, now)
        state = decision.state
        levels.append(decision.to_budget)
    assert levels[0] < before.to_budget - 0.05  # cut on the notice, before any latency rose
    assert max(levels) <= levels[0] + 1e-9  # and never relaxed while the pod drains


# --- the control loop scales the Deployment accordingly ------------------------------------------

async def _one_step(notice: str, started_after_s: float) -> tuple[list[int], list[tuple]]:
    """One step of the model's ControlLoop (as the kopf daemon runs it) with three ready pods, the
    first on a node carrying `notice`; returns the replica counts it asked for and its events."""
    ca = pki.make_ca()
    client = pki.issue(ca, pki.OPERATOR_COMMON_NAME, server=False)
    scaled, events = [], []

    async def scale(namespace, name, replicas):
        scaled.append(replicas)

    async def patch_status(namespace, name, patch):
        pass

    deps = LoopDeps(settings=OperatorSettings(), tls=ClientTls(ca.cert_pem, client.cert_pem, client.key_pem),
                    epoch=1, sequence=itertools.count(1), sender="op-test", patch_status=patch_status,
                    emit_event=lambda *e: events.append(e), scale_workers=scale)
    pods = {}
    for i, name in enumerate("abc"):
        body = pod(name, started_after_s)
        body["metadata"]["labels"] = manifests.selector("chat")
        body["spec"]["nodeName"] = f"n{i}"
        body["status"]["podIP"] = f"127.0.0.{i + 2}"  # nothing listens: streams stay down
        pods[name] = body
    nodes = {"n0": {"metadata": {"name": "n0"},
                    "spec": {"taints": [{"key": notice, "effect": "NoSchedule"}]}}}
    spec = {"model": "default", "replicas": 3, "slo": {"ttftP95Ms": 500},
            "quality": {"minBudget": 0.4}, "control": {"intervalSeconds": 5}}
    loop = ControlLoop(manifests.Owner("chat", "team-a", "uid-1"),
                       {"spec": spec, "metadata": {"generation": 1}, "status": {}},
                       ModelRuntime(pods=pods), nodes, deps)
    try:
        await loop.step()
    finally:
        await loop.pool.close()
    return scaled, events


async def test_a_spot_notice_longer_than_a_pod_start_adds_a_replica_and_says_why():
    scaled, events = await _one_step(SPOT, started_after_s=45)
    assert scaled == [4]
    replacing = [e for e in events if e[1] == "ReplacingCapacity"]
    assert replacing and "notice 120 s is longer than a pod's start (45 s)" in replacing[0][2]


async def test_a_notice_of_unknown_lead_adds_no_replica():
    scaled, _ = await _one_step("karpenter.sh/disrupted", started_after_s=45)
    assert scaled == []
