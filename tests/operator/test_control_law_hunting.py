"""The law does not hunt: a p95 that still holds the late samples a cut acted on does not cut
again."""

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
