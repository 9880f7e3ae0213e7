"""The law does not hunt: a p95 that still holds the late samples a cut acted on does not cut
again, and relaxing stops a margin under the budget at which the SLO last broke."""

import math

from dynasparse_operator.control_law import decide
from dynasparse_operator.law_types import LawParams, LawState, PodFacts, PodReport

PARAMS = LawParams(ttft_slo_ms=500.0, min_budget=0.3)
PODS = [PodFacts("w0", "n0")]


def _step(state: LawState, now: float, p95_ms: float):
    report = PodReport("w0", received_at=now, ttft_p95_ms=p95_ms, samples=50, running=10,
                       applied_budget=state.budget)
    return decide({"w0": report}, PODS, PARAMS, state, now)


def test_a_violating_p95_no_worse_than_the_one_that_cut_does_not_cut_again():
    first = _step(LawState(budget=1.0), 10.0, 600.0)
    assert first.kind == "slo-violation" and first.to_budget < 1.0
    again = _step(first.state, 12.0, 600.0)  # past the tighten hold-off, same stale window
    assert again.to_budget == first.to_budget and again.kind == "hold"
    assert "no worse than at the last cut" in again.reason


def test_a_violating_p95_worse_than_the_one_that_cut_cuts_again():
    first = _step(LawState(budget=1.0), 10.0, 600.0)
    worse = _step(first.state, 12.0, 900.0)
    assert worse.kind == "slo-violation" and worse.to_budget < first.to_budget


def test_the_same_violation_after_the_episode_is_acted_on_again():
    first = _step(LawState(budget=1.0), 10.0, 600.0)
    later = _step(first.state, 10.0 + PARAMS.episode_s + 1.0, 600.0)
    assert later.to_budget < first.to_budget


def test_relaxing_stops_a_margin_under_the_budget_where_the_slo_broke():
    state = _step(LawState(budget=0.8), 10.0, 600.0).state
    cap = 0.8 * math.exp(-PARAMS.knee_margin)
    now, highest = 10.0, state.budget
    for _ in range(100):  # fast responses for 400 s of decisions, well inside the knee's memory
        now += 2.0 * PARAMS.interval_s
        if now - 10.0 >= PARAMS.knee_memory_s:
            break
        state = _step(state, now, 100.0).state
        highest = max(highest, state.budget)
    assert highest <= cap + 1e-9
    assert highest > cap - 0.05, "it relaxes up to the cap"


def test_the_relax_cap_is_forgotten_after_its_memory():
    state = _step(LawState(budget=0.8), 10.0, 600.0).state
    state = LawState(budget=0.7, knee_budget=state.knee_budget, knee_at=state.knee_at)
    late = _step(state, 10.0 + PARAMS.knee_memory_s + 1.0, 100.0)
    assert late.kind == "relax" and late.to_budget > 0.8 * math.exp(-PARAMS.knee_margin)


def test_a_disruptions_feed_forward_budget_is_not_relaxed_on_samples_from_before_the_notice():
    pods = [PodFacts("w0", "n0", disruption=("aws-node-termination-handler/spot-itn",)),
            PodFacts("w1", "n1"), PodFacts("w2", "n2")]
    fast = {p.name: PodReport(p.name, received_at=10.0, ttft_p95_ms=100.0, samples=50,
                              running=10) for p in pods}
    notice = decide(fast, pods, PARAMS, LawState(budget=1.0), 10.0)
    assert notice.kind == "disruption" and notice.to_budget < 1.0
    state, now = notice.state, 10.0
    for _ in range(20):
        now += 2.0 * PARAMS.interval_s
        fresh = {name: PodReport(name, received_at=now, ttft_p95_ms=100.0, samples=50, running=10)
                 for name in fast}
        state = decide(fresh, pods[1:], PARAMS, state, now).state
    assert state.budget <= notice.to_budget + 1e-9
