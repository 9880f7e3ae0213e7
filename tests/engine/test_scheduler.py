"""The scheduler's invariants, without a model: admission, chunked prefill, fairness, accounting."""

from __future__ import annotations

import random

import pytest

from dynasparse_worker.engine.scheduler import MIN_CHUNK_TOKENS, Scheduler, SchedulerConfig
from dynasparse_worker.engine.sequence import Sequence, Status
from dynasparse_worker.engine.types import SamplingParams


def _seq(rid: str, prompt_len: int, max_tokens: int, stop: frozenset[int] = frozenset()) -> Sequence:
    return Sequence(rid, list(range(1, prompt_len + 1)), SamplingParams(max_tokens=max_tokens),
                    stop_ids=stop)


def _step(sched: Scheduler, token: int = 7):
    batch = sched.schedule()
    sampled = {c.seq.request_id: token for c in batch.prefill if c.completes_prompt}
    sampled.update({s.request_id: token for s in batch.decode})
    return batch, sched.postprocess(batch, sampled)


def _assert_balanced(sched: Scheduler, config: SchedulerConfig) -> None:
    admitted = sched.prefilling + sched.running
    assert sched.reserved_tokens == sum(s.reserved_tokens for s in admitted)
    assert sorted(sched.free_slots + [s.slot for s in admitted]) == list(range(config.num_slots))
    assert sched.reserved_tokens <= config.kv_capacity_tokens


def test_long_prompt_is_prefilled_in_chunks_while_others_keep_decoding():
    config = SchedulerConfig(num_slots=4, max_seq_len=256, kv_capacity_tokens=1024,
                             max_prefill_tokens=16)
    sched = Scheduler(config)
    sched.add(_seq("short", 4, 50))
    _step(sched)
    assert sched.by_id["short"].status is Status.RUNNING
    sched.add(_seq("long", 40, 5))
    chunks = []
    for _ in range(3):
        batch, _ = _step(sched)
        assert [s.request_id for s in batch.decode] == ["short"]  # decode never pauses
        chunks.extend((c.start, c.length) for c in batch.prefill)
    assert chunks == [(0, 16), (16, 16), (32, 8)]
    assert sched.by_id["long"].status is Status.RUNNING


def test_admission_waits_for_kv_capacity_and_keeps_fifo_order():
    config = SchedulerConfig(num_slots=4, max_seq_len=100, kv_capacity_tokens=100,
                             max_prefill_tokens=1000)
    sched = Scheduler(config)
    sched.add(_seq("a", 10, 50))  # reserves 60
    sched.add(_seq("b", 10, 50))  # would need 120 in all: waits
    sched.add(_seq("c", 2, 2))  # would fit, but must not overtake b
    batch, _ = _step(sched)
    assert [c.seq.request_id for c in batch.prefill] == ["a"]
    assert [s.request_id for s in sched.waiting] == ["b", "c"]
    while "a" in sched.by_id:
        _step(sched)
    batch, _ = _step(sched)
    assert [c.seq.request_id for c in batch.prefill] == ["b", "c"]


def test_no_request_starves_under_a_random_stream_and_kv_balances_to_zero():
    rng = random.Random(3)
    config = SchedulerConfig(num_slots=3, max_seq_len=64, kv_capacity_tokens=120,
                             max_prefill_tokens=24)
    sched = Scheduler(config)
    added, finished, steps = [], {}, 0
    for i in range(40):
        sched.add(_seq(f"r{i}", rng.randint(1, 40), rng.randint(1, 30), stop=frozenset({3})))
        added.append(f"r{i}")
        for _ in range(rng.randint(0, 4)):
            token = 3 if rng.random() < 0.05 else 7
            _, touched = _step(sched, token)
            steps += 1
            finished.update({s.request_id: s.finish_reason for s in touched if s.finish_reason})
            _assert_balanced(sched, config)
    while sched.has_work():
        _, touched = _step(sched)
        finished.update({s.request_id: s.finish_reason for s in touched if s.finish_reason})
        _assert_balanced(sched, config)
        steps += 1
        assert steps < 5000, "a request starved"
    assert sorted(finished) == sorted(added)
    assert sched.reserved_tokens == 0 and sched.used_tokens() == 0
    assert sorted(sched.free_slots) == list(range(config.num_slots))


@pytest.mark.parametrize("when", ["waiting", "prefilling", "running"])
def test_cancellation_frees_the_slot_and_the_reservation(when):
    config = SchedulerConfig(num_slots=1, max_seq_len=64, kv_capacity_tokens=64,
                             max_prefill_tokens=4)
    sched = Scheduler(config)
    sched.add(_seq("x", 10, 20))
    if when != "waiting":
        _step(sched)  # admitted, first chunk prefilled
    if when == "running":
        for _ in range(3):
            _step(sched)
    assert sched.by_id["x"].status.value == when
    cancelled = sched.cancel("x")
    assert cancelled.finish_reason == "cancelled" and cancelled.slot == -1
    assert sched.reserved_tokens == 0 and sched.free_slots == [0] and not sched.has_work()
    sched.add(_seq("y", 3, 2))
    batch, _ = _step(sched)
    assert batch.prefill[0].seq.slot == 0
    assert sched.cancel("nobody") is None


def test_generation_stops_at_max_tokens_or_a_stop_token():
    sched = Scheduler(SchedulerConfig(num_slots=2, max_seq_len=64, kv_capacity_tokens=128))
    sched.add(_seq("len", 3, 4))
    sched.add(_seq("stop", 3, 10, stop=frozenset({9})))
    for _ in range(2):
        _step(sched, token=7)
    _step(sched, token=9)
    assert sched.by_id["len"].output_ids == [7, 7, 9]
    assert "stop" not in sched.by_id
    _step(sched)
    assert "len" not in sched.by_id and sched.reserved_tokens == 0


def test_prompts_that_can_never_fit_are_refused_at_once():
    sched = Scheduler(SchedulerConfig(num_slots=2, max_seq_len=16, kv_capacity_tokens=32))
    with pytest.raises(ValueError, match="at most 16"):
        sched.add(_seq("big", 16, 1))
    with pytest.raises(ValueError, match="empty"):
        sched.add(_seq("empty", 0, 1))
    sched.add(_seq("ok", 10, 100))
    assert sched.by_id["ok"].max_new_tokens == 6  # clipped to the slot's length


def test_prompts_riding_in_the_decode_step_fill_only_the_rows_decoding_leaves_free():
    config = SchedulerConfig(num_slots=8, max_seq_len=256, kv_capacity_tokens=2048,
                             max_prefill_tokens=100, max_step_rows=48)
    sched = Scheduler(config)
    for i in range(6):
        sched.add(_seq(f"r{i}", 2, 50))
    _step(sched)
    assert len(sched.running) == 6
    sched.add(_seq("long", 120, 5))
    batch, _ = _step(sched)
    assert [c.length for c in batch.prefill] == [48 - 6]  # the decode batch keeps its rows
    assert len(batch.decode) + sum(c.length for c in batch.prefill) == 48
    full = Scheduler(SchedulerConfig(num_slots=8, max_seq_len=256, kv_capacity_tokens=2048,
                                     max_prefill_tokens=100, max_step_rows=8))
    for i in range(7):
        full.add(_seq(f"r{i}", 2, 50))
    _step(full)
    full.add(_seq("late", 90, 5))
    batch, _ = _step(full)
    assert [c.length for c in batch.prefill] == [MIN_CHUNK_TOKENS]  # prefill still progresses
    idle = Scheduler(config)
    idle.add(_seq("alone", 120, 5))
    batch, _ = _step(idle)
    assert [c.length for c in batch.prefill] == [100]  # nothing decodes: the whole chunk budget
