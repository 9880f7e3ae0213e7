"""The engine's tokens match Hugging Face `generate`, however requests are batched and chunked."""

from __future__ import annotations

import pytest
import torch

from hf_reference import hf_greedy

from dynasparse_worker.engine import Engine, EngineConfig
from dynasparse_worker.engine.types import SamplingParams


def _run(engine: Engine) -> dict[str, list]:
    events: dict[str, list] = {}
    while engine.has_work():
        for event in engine.step():
            events.setdefault(event.request_id, []).append(event)
    return events


RIDING = pytest.mark.parametrize("ride", [False, True], ids=["eager-prefill", "prompts-ride-in-decode"])


def _rode(engine: Engine, ride: bool) -> bool:
    """Whether prompt chunks ran as decode rows exactly when asked (the test is not vacuous)."""
    return (engine.runner.steps_with_riding_prompts > 0) == ride


@RIDING
def test_greedy_tokens_equal_hf_generate_on_the_default_model(default_model, ride):
    tok = default_model.tokenizer
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small"]
    ids = [tok(p)["input_ids"] for p in prompts]
    engine = Engine.from_loaded(default_model, EngineConfig(max_batch_size=4, max_seq_len=128,
                                                            max_prefill_tokens=6,
                                                            prefill_in_decode=ride))
    for i, prompt in enumerate(ids):
        engine.add_request(str(i), prompt, SamplingParams(max_tokens=16, ignore_eos=True))
    events = _run(engine)
    for i, prompt in enumerate(ids):
        got = [t for e in events[str(i)] for t in e.token_ids]
        assert got == hf_greedy(default_model.model, prompt, 16), prompts[i]
        streamed = "".join(e.text for e in events[str(i)])  # incremental detokenization
        assert streamed == tok.decode(got, skip_special_tokens=True)
    assert "Paris" in "".join(e.text for e in events["0"])
    assert _rode(engine, ride)


def test_stop_strings_cut_the_text_and_finish_the_request(default_model):
    tok = default_model.tokenizer
    engine = Engine.from_loaded(default_model, EngineConfig(max_batch_size=2, max_seq_len=96))
    prompt = tok("The capital of France is")["input_ids"]
    engine.add_request("s", prompt, SamplingParams(max_tokens=30, stop_strings=("Paris",)))
    events = _run(engine)["s"]
    assert events[-1].finished and events[-1].finish_reason == "stop"
    text = "".join(e.text for e in events)
    assert "Paris" not in text and len(text) > 0
    assert events[-1].completion_tokens < 30


@RIDING
def test_requests_joining_mid_flight_get_the_same_tokens_as_alone(tiny_llama, ride):
    config = EngineConfig(max_batch_size=3, max_seq_len=64, kv_capacity_tokens=192,
                          max_prefill_tokens=5, prefill_in_decode=ride)
    engine = Engine(tiny_llama, None, config)
    prompts = {"a": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], "b": [5, 4], "c": [9, 9, 9], "d": [2] * 13}
    engine.add_request("a", prompts["a"], SamplingParams(max_tokens=12, ignore_eos=True))
    engine.add_request("b", prompts["b"], SamplingParams(max_tokens=4, ignore_eos=True))
    events: dict[str, list[int]] = {}
    for step in range(40):
        if step == 2:
            engine.add_request("c", prompts["c"], SamplingParams(max_tokens=9, ignore_eos=True))
        if step == 4:
            engine.add_request("d", prompts["d"], SamplingParams(max_tokens=6, ignore_eos=True))
        for event in engine.step():
            events.setdefault(event.request_id, []).extend(event.token_ids)
    assert not engine.has_work()
    for rid, prompt in prompts.items():
        assert events[rid] == hf_greedy(tiny_llama, prompt, len(events[rid])), rid
    assert [len(events[r]) for r in "abcd"] == [12, 4, 9, 6]
    assert engine.stats().kv_usage == 0.0 and engine.stats().extra["kv_reserved"] == 0.0
    assert _rode(engine, ride)


def test_generation_ends_at_eos_unless_ignored(tiny_llama):
    engine = Engine(tiny_llama, None, EngineConfig(max_batch_size=2, max_seq_len=64,
                                                   kv_capacity_tokens=128))
    first = hf_greedy(tiny_llama, [1, 2, 3], 1)[0]
    engine.add_request("s", [1, 2, 3], SamplingParams(max_tokens=8, stop_token_ids=(first,)))
    engine.add_request("i", [1, 2, 3], SamplingParams(max_tokens=8, ignore_eos=True))
    events = _run(engine)
    assert events["s"][-1].finish_reason == "stop" and events["s"][-1].completion_tokens == 1
    assert events["i"][-1].finish_reason == "length" and events["i"][-1].completion_tokens == 8


def test_cancelling_a_running_request_reports_it_and_frees_its_kv(tiny_llama):
    engine = Engine(tiny_llama, None, EngineConfig(max_batch_size=2, max_seq_len=64,
                                                   kv_capacity_tokens=128))
    engine.add_request("x", [1, 2, 3], SamplingParams(max_tokens=50, ignore_eos=True))
    engine.step()
    engine.step()
    assert engine.stats().running == 1 and engine.stats().kv_usage > 0
    assert engine.cancel("x") and not engine.cancel("x")
    events = engine.step()
    assert [(e.request_id, e.finish_reason) for e in events] == [("x", "cancelled")]
    assert not engine.has_work() and engine.stats().kv_usage == 0.0


def test_seeded_sampling_repeats_and_does_not_depend_on_the_batch(tiny_llama):
    params = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, top_k=20, seed=1234,
                            ignore_eos=True)

    def tokens(others: int) -> list[int]:
        engine = Engine(tiny_llama, None, EngineConfig(max_batch_size=4, max_seq_len=64,
                                                       kv_capacity_tokens=256))
        engine.add_request("me", [4, 5, 6], params)
        for i in range(others):
            engine.add_request(f"o{i}", [7, 8], SamplingParams(max_tokens=10, temperature=0.7))
        return [t for e in _run(engine)["me"] for t in e.token_ids]

    alone = tokens(0)
    assert alone == tokens(2)
    assert alone != hf_greedy(tiny_llama, [4, 5, 6], 10)  # it really sampled


# Gemma: an 8-token window so the 57-token prompt outruns it, caps small enough to bind on random
# weights, a softmax scale that is not head_dim^-0.5, head_dim != hidden / heads.
GEMMA = {"head_dim": 32, "sliding_window": 8, "query_pre_attn_scalar": 24}
GEMMA2 = {**GEMMA, "num_hidden_layers": 3, "attn_logit_softcapping": 2.0,
          "final_logit_softcapping": 3.0}  # layers 0, 2 local
GEMMA3 = {**GEMMA, "num_hidden_layers": 3, "rope_local_base_freq": 100.0,  # q/k norms, 2 RoPE tables
          "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}


def _tiny_family(family: str, extra: dict):
    """A tiny random model of `family`; Gemma's zero-initialised norm weights are randomised so the
    (1 + weight) scales are exercised."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=97)
    config = AutoConfig.for_model(family, **{**sizes, **extra})
    model = AutoModelForCausalLM.from_config(config).eval()
    if family.startswith("gemma"):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize("family,extra", [
    ("qwen3", {"head_dim": 32}),  # per-head q/k RMSNorm
    ("qwen2", {}),  # q/k/v bias
    ("mistral", {"sliding_window": None}),
    ("llama", {"max_position_embeddings": 512, "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 32}}),  # Llama-3 rope scaling
    ("gemma2", GEMMA2),
    ("gemma3_text", GEMMA3),
])
@RIDING
def test_other_families_match_hf_greedy_through_chunked_prefill(family, extra, ride):
    model = _tiny_family(family, extra)
    engine = Engine(model, None, EngineConfig(max_batch_size=2, max_seq_len=128,
                                              kv_capacity_tokens=256, max_prefill_tokens=7,
                                              prefill_in_decode=ride))
    prompt = list(range(3, 60))
    engine.add_request("a", prompt, SamplingParams(max_tokens=8, ignore_eos=True))
    got = [t for e in _run(engine)["a"] for t in e.token_ids]
    assert got == hf_greedy(model, prompt, 8)
    assert _rode(engine, ride)


@pytest.mark.parametrize("family,extra", [("gemma2", GEMMA2), ("gemma3_text", GEMMA3)])
def test_gemma_requests_joining_mid_flight_get_the_same_tokens_as_alone(family, extra):
    model = _tiny_family(family, extra)
    engine = Engine(model, None, EngineConfig(max_batch_size=3, max_seq_len=64,
                                              kv_capacity_tokens=192, max_prefill_tokens=5))
    prompts = {"a": list(range(5, 19)), "b": [5, 4], "c": [9, 9, 9, 1, 2, 3, 4, 5, 6, 7, 8]}
    engine.add_request("a", prompts["a"], SamplingParams(max_tokens=12, ignore_eos=True))
    engine.add_request("b", prompts["b"], SamplingParams(max_tokens=9, ignore_eos=True))
    events: dict[str, list[int]] = {}
    for step in range(40):
        if step == 3:
            engine.add_request("c", prompts["c"], SamplingParams(max_tokens=8, ignore_eos=True))
        for event in engine.step():
            events.setdefault(event.request_id, []).extend(event.token_ids)
    assert not engine.has_work()
    for rid, prompt in prompts.items():  # rows of one decode batch sit at different window starts
        assert events[rid] == hf_greedy(model, prompt, len(events[rid])), rid
    assert engine.stats().kv_usage == 0.0


def test_unsupported_families_are_refused_with_a_user_error():
    from transformers import GPT2Config, GPT2LMHeadModel

    from dynasparse_worker.errors import UserError

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50)).eval()
    with pytest.raises(UserError, match="gpt2"):
        Engine(model, None, EngineConfig(max_batch_size=1, max_seq_len=16, kv_capacity_tokens=16))
