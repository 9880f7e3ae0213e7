"""The AdaptiveModel's quality bound, followed from the CR to the budget a worker applies: the spec
becomes the pod's environment (manifests), the environment the worker's bound (`serve`'s flags),
and the operator's law steers that worker over the shared contract while its commands arrive, get
lost, or stop for good. Whatever happens, no applied budget lies below the CR's bound."""

from __future__ import annotations

import argparse
import math
import os
from unittest.mock import patch

from hypothesis import given, settings, strategies as st

from dynasparse_operator import manifests
from dynasparse_operator.law_loop import ModelLaw
from dynasparse_operator.law_types import LawParams, LawState, PodFacts
from dynasparse_operator.settings import WorkerSettings
from dynasparse_operator.spec import parse_spec
from dynasparse_operator.status import StatusInput, status_patch
from dynasparse_operator import wire
from dynasparse_proto.contract import command_from_pb
from dynasparse_proto.quality import budget_for_loss
from dynasparse_worker.commands import serve
from dynasparse_worker.control.memory import MemoryReading
from dynasparse_worker.control.service import report_from_snapshot
from dynasparse_worker.control.supervisor import Supervisor
from dynasparse_worker.engine.types import EngineStats

CURVE = [(0.3, 0.5), (0.5, 0.2), (0.7, 0.05), (1.0, 0.0)]
OWNER = manifests.Owner("chat", "team-a", "uid-1")


class Actuator:
    """The model side: records every budget applied."""

    def __init__(self, calibration_min: float) -> None:
        self.applied: list[float] = []
        self._min = calibration_min

    def set_budget(self, budget: float) -> float:
        self.applied.append(budget)
        return 0.0

    def min_budget(self) -> float:
        return self._min

    def quality_curve(self):
        return list(CURVE)


class Memory:
    def __init__(self) -> None:
        self.used = 0

    def read(self) -> MemoryReading:
        return MemoryReading(self.used, 100, "test")


def worker_from_the_pod_spec(cr: dict, calibration_min: float, clock, memory) -> Supervisor:
    """The worker a Deployment made from `cr` starts: its env parsed by `dynasparse serve`."""
    (container,) = manifests.deployment(parse_spec(cr), OWNER, WorkerSettings())["spec"][
        "template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    with patch.dict(os.environ, env):
        parser = argparse.ArgumentParser()
        serve.add_arguments(parser)
        args = parser.parse_args([])
    sup = Supervisor(Actuator(calibration_min), pod_name="w0", model_name="chat", memory=memory,
                     initial_budget=args.budget, quality_min_budget=args.min_budget,
                     quality_max_loss=args.max_loss, clock=lambda: clock[0])
    sup.model_loaded = True
    return sup


quality = st.one_of(st.builds(lambda b: {"minBudget": b}, st.floats(0.01, 1.0)),
                    st.builds(lambda loss: {"maxLoss": loss}, st.floats(0.0, 1.0)))
events = st.lists(st.one_of(
    st.tuples(st.just("report"), st.floats(0, 5000), st.integers(0, 100), st.floats(0, 5),
              st.booleans()),  # p95 TTFT, samples, oldest waiting, the command arrives
    st.tuples(st.just("pressure"), st.integers(0, 100), st.integers(0, 100)),
    st.tuples(st.just("wait"), st.floats(0, 7 * 86400)),  # no operator for a while (or ever)
), max_size=20)


@settings(max_examples=150, deadline=None)
@given(bound=quality, max_budget=st.floats(0.05, 1.0), calibration_min=st.floats(0.05, 1.0),
       script=events)
def test_the_applied_budget_never_goes_below_the_crs_bound_before_contact_without_it_and_after_updates(
        bound, max_budget, calibration_min, script):
    cr = {"model": "default", "slo": {"ttftP95Ms": 500}, "quality": bound,
          "control": {"maxBudget": max_budget}}
    cr_bound = bound.get("minBudget") or budget_for_loss(CURVE, bound.get("maxLoss", math.inf))
    floor = max(calibration_min, cr_bound)
    clock, memory = [0.0], Memory()
    sup = worker_from_the_pod_spec(cr, calibration_min, clock, memory)
    actuator = sup.actuator
    assert actuator.applied and min(actuator.applied) >= floor - 1e-9, "before the first contact"
    params = LawParams(ttft_slo_ms=500, min_budget=bound.get("minBudget"),
                       max_loss=bound.get("maxLoss"), max_budget=max_budget, interval_s=1.0)
    law, sequence = ModelLaw(LawState()), 0
    for event in script:
        if event[0] == "report":
            _, p95, samples, oldest, arrives = event
            for _ in range(samples):
                sup.record_first_token(p95 / 1000)
            report = report_from_snapshot(sup.snapshot(), with_quality_curve=sequence == 0)
            report.load.oldest_waiting_s = oldest
            law.on_report("w0", report, clock[0], params)
            decision = law.decide([PodFacts("w0")], params, clock[0])
            for command in law.due(decision.commands.values(), params, clock[0]):
                assert command.floor >= cr_bound - 1e-9, "the operator sends the CR's bound too"
                sequence += 1
                message = wire.command_to_pb(command, params, epoch=1, sequence=sequence, sender="op")
                law.sent(command, clock[0])
                if arrives:
                    sup.apply_update(command_from_pb(message))
            clock[0] += 0.5
        elif event[0] == "pressure":
            _, queue, used = event
            memory.used = used
            sup.on_step(EngineStats(queue_depth=queue))
        else:
            clock[0] += event[1]
            sup.on_step(EngineStats())
        assert sup.control.ceiling >= sup.control.floor >= floor - 1e-9
        assert math.isfinite(sup.budget) and min(actuator.applied) >= floor - 1e-9


def test_a_max_budget_below_the_floor_max_loss_gives_is_reported_in_status():
    params = LawParams(ttft_slo_ms=500, max_loss=0.1, max_budget=0.4)
    law = ModelLaw(LawState())
    sup = worker_from_the_pod_spec({"model": "default", "slo": {"ttftP95Ms": 500},
                                    "quality": {"maxLoss": 0.1}}, 0.3, [0.0], Memory())
    law.on_report("w0", report_from_snapshot(sup.snapshot()), 0.0, params)
    decision = law.decide([PodFacts("w0")], params, 1.0)
    assert decision.floor == decision.ceiling == 0.7 and decision.to_budget == 0.7
    assert decision.problems == ("maxBudget 0.40 is below the quality floor 0.70 (maxLoss 0.1 -> "
                                 "budget 0.70): budgets stay at 0.70; raise maxBudget or relax the "
                                 "quality bound",)
    patch_ = status_patch(StatusInput(
        generation=1, desired_replicas=1, existing_pods=1, ready_pods=1, selector="s=1",
        decision=decision, pods=[PodFacts("w0")], reports=law.reports, connected={"w0": True},
        ttft_slo_ms=500))
    degraded = next(c for c in patch_["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "InvalidQualityBounds"
    assert "raise maxBudget or relax the quality bound" in degraded["message"]
