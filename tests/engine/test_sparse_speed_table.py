"""The engine measures every plan level's step time and offers only levels that buy speed.

A tiny random Llama with a synthetic plan table on the CPU; step times come from a scripted
`StepTimer` (the engine's injectable timer interface): it runs each real decode step once, then
reports a fixed time per level, so which levels are offered is deterministic.
"""

from __future__ import annotations

import pytest
import torch

from dynasparse_worker.engine import Engine, EngineConfig
from dynasparse_worker.engine.plans import DENSE
from dynasparse_worker.engine.types import SamplingParams
from dynasparse_worker.gating import install_gates
from dynasparse_worker.gating.synthetic_plan import synthetic_table

CONFIG = EngineConfig(max_batch_size=2, max_seq_len=48, kv_capacity_tokens=96)
LEVELS = [0.75, 0.5, 0.35]


class ScriptedTimer:
    """Runs the step it is handed (a real decode forward) and reports a scripted time: `ms` per
    level budget, plus `sparse_penalty` for graphs that run any group's sparse kernel."""

    def __init__(self, ms: dict[float, float], sparse_penalty: dict[float, float] | None = None):
        self.ms, self.sparse_penalty = ms, sparse_penalty or {}
        self.calls: list[tuple[int, tuple, float]] = []

    def __call__(self, run, bucket, key, budget):
        run()
        self.calls.append((bucket, key, budget))
        penalty = self.sparse_penalty.get(budget, 0.0) if "sparse" in key[1] else 0.0
        return self.ms[budget] + penalty


def _engine(timer, depth_share: float = 0.5):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                         max_position_embeddings=256, eos_token_id=96)
    gated = install_gates(LlamaForCausalLM(config).eval())
    synthetic_table(gated, gated.half_bytes(), LEVELS, 97, torch.device("cpu"), depth_share)
    return gated, Engine(gated, None, CONFIG, speed_timer=timer)


# 0.75 is slower than dense; 0.5 only pays with every group on the dense kernel
SCRIPT = {1.0: 10.0, 0.75: 10.5, 0.5: 8.0, 0.35: 6.0}
PENALTY = {0.5: 4.0}


@pytest.fixture(scope="module")
def measured():
    timer = ScriptedTimer(SCRIPT, PENALTY)
    gated, engine = _engine(timer)
    return timer, gated, engine


def test_every_level_is_timed_at_every_batch_bucket_through_real_steps(measured):
    timer, gated, engine = measured
    speed = engine.speed
    assert speed is not None and set(speed.levels) == set(engine.runner.buckets)
    for bucket, levels in speed.levels.items():
        assert [lv.budget for lv in levels] == [1.0, *LEVELS]
        assert {b for bk, _, b in timer.calls if bk == bucket} == {1.0, *LEVELS}
    assert engine.runner.gated_ops._packed, "the timed steps ran the sparse kernels for real"


def test_offered_levels_get_strictly_faster_and_dropped_ones_are_no_faster(measured):
    _, _, engine = measured
    for levels in engine.speed.levels.values():
        fastest = None
        for level in levels:
            if level.offered:
                assert fastest is None or level.ms < fastest
                fastest = level.ms
            else:
                assert level.ms >= 0.98 * fastest and "not 2% faster" in level.note
        assert [lv.offered for lv in levels] == [True, False, True, True]


def test_a_level_that_pays_only_on_dense_kernels_runs_them(measured):
    _, gated, engine = measured
    runner = engine.runner
    level = engine.speed.levels[1][2]  # budget 0.5
    assert level.key[1] == ("dense",) * 4 and level.ms == SCRIPT[0.5]
    gated.set_budget(0.5)
    engine.add_request("r", [3, 1, 4, 1, 5], SamplingParams(max_tokens=2, ignore_eos=True))
    while engine.has_work():
        engine.step()
    assert runner.gated_ops.forced == ("dense",) * 4


@pytest.mark.parametrize("budget", [0.75, 0.6])
def test_a_budget_whose_level_is_not_offered_runs_the_next_denser_offered_level(measured, budget):
    _, gated, engine = measured
    gated.set_budget(budget)
    plan = engine.runner.current_plan()
    for nb in set(engine.speed.plan_bucket.values()):  # the measured plan buckets
        assert plan.variants[nb] == DENSE, "dense is the only faster plan at or above the budget"
        assert float(gated.state.thresholds[nb].abs().max()) == 0.0


def _served_ms(table, plan, nb: int) -> float:
    """The scripted time of the plan a bucket is served: a level's own, or (thresholds between two
    offered neighbours) the time interpolated with the same weight."""
    mine = plan.thresholds[nb]
    for k in range(len(table.budgets)):
        if torch.allclose(table.thresholds[k, nb], mine):
            return SCRIPT[float(table.budgets[k])]
    for k in range(len(table.budgets) - 1):
        lo, hi = table.thresholds[k, nb], table.thresholds[k + 1, nb]
        span = hi - lo
        i = int(span.abs().argmax())
        weight = float((mine.flatten()[i] - lo.flatten()[i]) / span.flatten()[i])
        if 0 < weight < 1 and torch.allclose(lo + weight * span, mine, atol=1e-5):
            assert bool(table.offered[k, nb]) and bool(table.offered[k + 1, nb])
            a, b = SCRIPT[float(table.budgets[k])], SCRIPT[float(table.budgets[k + 1])]
            return a + weight * (b - a)
    raise AssertionError("the served plan is neither a level nor between two offered levels")


def test_served_step_time_never_rises_as_the_budget_falls(measured):
    _, gated, engine = measured
    table = gated.table
    for nb in set(engine.speed.plan_bucket.values()):
        times = [_served_ms(table, table.plan_for(budget), nb)
                 for budget in (1.0, 0.9, 0.8, 0.75, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35)]
        assert times == sorted(times, reverse=True), times


def test_engine_stats_report_offered_and_dropped_levels(measured):
    _, _, engine = measured
    extra = engine.stats().extra
    assert extra["speed_levels_offered_b1"] == 3.0 and extra["speed_levels_dropped_b1"] == 1.0
    assert extra["speed_best_speedup_b1"] == pytest.approx(SCRIPT[1.0] / SCRIPT[0.35])
    report = engine.speed.report()
    assert report["device"] == "cpu" and report["buckets"]["1"]["levels"][1]["offered"] is False


def test_depth_only_levels_are_timed_on_their_own_depth_plan_not_as_dense():
    timer = ScriptedTimer({1.0: 10.0, 0.75: 8.0, 0.5: 6.0, 0.35: 5.0})
    gated, engine = _engine(timer, depth_share=1.0)  # no width gate on: skipped halves only
    for bucket, levels in engine.speed.levels.items():
        for level in levels[1:]:
            assert level.key[0][1] is not None, "a depth-only level skips halves"
            timed = [key for bk, key, b in timer.calls if bk == bucket and b == level.budget]
            assert timed and all(key[0][1] == level.key[0][1] for key in timed)
            assert level.offered and level.ms == timer.ms[level.budget]


def test_without_a_timer_a_cpu_engine_measures_nothing_and_offers_every_level():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(4)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                         max_position_embeddings=256, eos_token_id=96)
    gated = install_gates(LlamaForCausalLM(config).eval())
    synthetic_table(gated, gated.half_bytes(), [0.5], 97, torch.device("cpu"))
    engine = Engine(gated, None, CONFIG)
    assert engine.speed is None and gated.table.offered is None
    assert "speed_levels_offered_b1" not in engine.stats().extra
