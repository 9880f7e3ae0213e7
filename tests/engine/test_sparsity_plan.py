"""The gated model's plan (thresholds, skipped halves, KV cap) runs inside the engine, from tensors."""

from __future__ import annotations

from dynasparse_worker.engine import Engine, EngineConfig
from dynasparse_worker.engine.types import SamplingParams
from dynasparse_worker.gating.state import SparsityState


def _state(model) -> SparsityState:
    c = model.config
    widths = [[c.hidden_size, c.num_attention_heads * (c.hidden_size // c.num_attention_heads),
               c.hidden_size, c.intermediate_size]] * c.num_hidden_layers
    return SparsityState(widths)


def _tokens(engine: Engine, prompt: list[int], n: int = 8) -> list[int]:
    engine.add_request("r", prompt, SamplingParams(max_tokens=n, ignore_eos=True))
    out = []
    while engine.has_work():
        out.extend(t for e in engine.step() for t in e.token_ids)
    return out


def test_budget_changes_apply_to_the_next_request_without_rebuilding(tiny_llama):
    config = EngineConfig(max_batch_size=2, max_seq_len=64, kv_capacity_tokens=128)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    dense = _tokens(Engine(tiny_llama, None, config), prompt)
    state = _state(tiny_llama)
    engine = Engine(tiny_llama, None, config, state=state)
    assert _tokens(engine, prompt) == dense  # threshold 0, all halves kept = dense
    state.thresholds.fill_(0.5)  # in place, as set_budget does
    sparse = _tokens(engine, prompt)
    assert sparse != dense
    state.thresholds.zero_()
    state.layer_keep[:, 1, 1] = 0.0  # skip the last layer's MLP half
    skipped = _tokens(engine, prompt)
    assert skipped != dense and skipped != sparse
    state.layer_keep.fill_(1.0)
    assert _tokens(engine, prompt) == dense


def test_kv_cap_limits_decode_attention_to_the_recent_window(tiny_llama):
    config = EngineConfig(max_batch_size=2, max_seq_len=64, kv_capacity_tokens=128)
    prompt = list(range(1, 30))
    state = _state(tiny_llama)
    engine = Engine(tiny_llama, None, config, state=state)
    dense = _tokens(engine, prompt)
    state.kv_cap.fill_(4)
    capped = _tokens(engine, prompt)
    assert capped[0] == dense[0]  # the first token comes from the (uncapped) prefill
    assert capped != dense
