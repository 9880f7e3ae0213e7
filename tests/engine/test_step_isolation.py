"""One request must never fail the others: sampling parameters are checked on the way in, and a
step that still raises fails only the sequence that breaks it."""

from __future__ import annotations

import pytest

from dynasparse_worker.engine import Engine, EngineConfig
from dynasparse_worker.engine.sequence import Sequence
from dynasparse_worker.engine.types import SamplingParams
from dynasparse_worker.errors import UserError

CONFIG = EngineConfig(max_batch_size=4, max_seq_len=64, kv_capacity_tokens=256)
PROMPTS = {"a": [3, 1, 4, 1, 5], "b": [9, 2, 6, 5, 3, 5], "c": [8, 9, 7]}


def _run(engine: Engine) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    reasons: dict[str, str] = {}
    while engine.has_work():
        for ev in engine.step():
            out.setdefault(ev.request_id, []).extend(ev.token_ids)
            if ev.finished:
                reasons[ev.request_id] = ev.finish_reason
    return {rid: (toks, reasons[rid]) for rid, toks in out.items()}


def _greedy(engine: Engine) -> None:
    for rid, prompt in PROMPTS.items():
        engine.add_request(rid, prompt, SamplingParams(max_tokens=8, ignore_eos=True))


@pytest.fixture
def expected(tiny_llama):
    engine = Engine(tiny_llama, None, CONFIG)
    _greedy(engine)
    return _run(engine)


@pytest.mark.parametrize("bad", [dict(seed=2 ** 70), dict(top_k=2 ** 64), dict(top_p=float("nan")),
                                 dict(temperature=float("inf"))])
def test_unusable_sampling_parameters_are_refused_at_admission(tiny_llama, bad):
    engine = Engine(tiny_llama, None, CONFIG)
    with pytest.raises(UserError, match=next(iter(bad))):
        engine.add_request("bad", [1, 2, 3], SamplingParams(**{"temperature": 1.0, **bad}))
    assert not engine.has_work()


def test_a_sequence_that_breaks_the_step_fails_alone_and_the_others_keep_their_tokens(
        tiny_llama, expected):
    engine = Engine(tiny_llama, None, CONFIG)
    _greedy(engine)
    engine.step()  # the three are prefilled and running
    # injected past admission's checks: torch cannot hold this seed, so sampling the batch raises
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=2 ** 70)
    engine.scheduler.add(Sequence("bad", [4, 4, 4], params, seed=2 ** 70))
    got = _run(engine)
    bad_tokens, bad_reason = got.pop("bad")
    assert bad_tokens == [] and bad_reason.startswith("error")
    first = {rid: toks[:1] for rid, (toks, _) in expected.items()}
    assert {rid: (first[rid] + toks, reason) for rid, (toks, reason) in got.items()} == expected
    assert engine.scheduler.free_slots and len(engine.scheduler.free_slots) == 4, "its KV slot is free"
