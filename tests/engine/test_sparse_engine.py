"""The gated engine (issue 4): sparse projections, depth plans, budget changes, KV cap with sinks.

Tiny random Llamas (3 layers) on the CPU; the gated HF model (`gating.install_gates`) is the
reference: under a fixed plan its masked dense forward is the contract the engine must meet.
"""

from __future__ import annotations

import json

import pytest
import torch

from hf_reference import hf_greedy

from dynasparse.cli import main
from dynasparse_worker.engine import Engine, EngineConfig
from dynasparse_worker.engine.attention import decode_attention_torch
from dynasparse_worker.engine.model import LinearOps
from dynasparse_worker.engine.plans import DENSE
from dynasparse_worker.engine.types import SamplingParams
from dynasparse_worker.gating import install_gates
from dynasparse_worker.kernels.engine_ops import SparseLinearOps

CONFIG = EngineConfig(max_batch_size=2, max_seq_len=48, kv_capacity_tokens=96)
PROMPT = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]


def _tiny(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                         max_position_embeddings=256, eos_token_id=96)
    return LlamaForCausalLM(config).eval()


def _tokens(engine: Engine, n: int = 8) -> list[int]:
    engine.add_request("r", PROMPT, SamplingParams(max_tokens=n, ignore_eos=True))
    out = []
    while engine.has_work():
        out.extend(t for e in engine.step() for t in e.token_ids)
    return out


def _hf_tokens(model, n: int = 8) -> list[int]:
    ids = torch.tensor([PROMPT])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                             min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(PROMPT):].tolist()


class CountingOps(LinearOps):
    """The reference dispatch (masked dense), counting calls per (layer, group)."""

    def __init__(self, state):
        super().__init__(state)
        self.calls: dict[tuple[int, int], int] = {}

    def project(self, x, weight, bias, layer, group, bucket):
        self.calls[layer, group] = self.calls.get((layer, group), 0) + 1
        return super().project(x, weight, bias, layer, group, bucket)


def test_sparse_kernel_engine_gives_the_gated_hf_models_tokens_under_width_and_depth_plans():
    gated = install_gates(_tiny())
    state = gated.state
    state.thresholds[:, :, :] = 0.4  # every group drops its small channels
    state.layer_keep[:, 1, 1] = 0.0  # and layer 1's MLP half is skipped
    state.select_bucket(0)
    reference = _hf_tokens(gated.model)
    ops = SparseLinearOps(state, policy=lambda rows, group: "sparse")  # fp32 rows: exact sums
    engine = Engine(gated, None, CONFIG, ops=ops)
    assert _tokens(engine) == reference
    assert ops._packed, "the input-sparse path ran"
    state.thresholds.zero_()
    state.layer_keep.fill_(1.0)
    state.select_bucket(0)
    engine.refresh_plan()
    assert _tokens(engine) == _hf_tokens(gated.model)  # back to dense, same engine


def test_skipped_halves_never_project_through_the_gates_but_attention_keeps_its_kv():
    model = _tiny(1)
    gated = install_gates(model)
    state = gated.state
    state.thresholds.fill_(1e-6)  # gates on, so the counting dispatch serves every projection
    dense_engine = Engine(gated, None, CONFIG, ops=CountingOps(state))
    _tokens(dense_engine, 4)
    state.layer_keep[:, 1, 0] = 0.0  # layer 1 attention
    state.layer_keep[:, 2, 1] = 0.0  # layer 2 MLP
    ops = CountingOps(state)
    engine = Engine(gated, None, CONFIG, ops=ops)
    _tokens(engine, 4)
    assert (1, 0) not in ops.calls and (1, 1) not in ops.calls
    assert (2, 2) not in ops.calls and (2, 3) not in ops.calls
    assert ops.calls[1, 2] == ops.calls[0, 0] == ops.calls[2, 0] > 0
    # layer 1's input does not depend on layer 1, so the prompt's keys/values there are the dense ones
    prompt = slice(0, len(PROMPT))
    for mine, dense in ((engine.runner.cache.k, dense_engine.runner.cache.k),
                        (engine.runner.cache.v, dense_engine.runner.cache.v)):
        assert mine[1, 0, prompt].abs().sum() > 0
        torch.testing.assert_close(mine[1, 0, prompt], dense[1, 0, prompt], atol=1e-4, rtol=1e-4)


def test_a_denser_plan_after_a_skipped_attention_half_attends_over_the_whole_prompt():
    """Prompt under a plan that skips layer 1's attention, then dense decoding: the engine gives the
    tokens of the gated HF model doing the same (whose cache always holds every key and value)."""
    gated = install_gates(_tiny(2))
    state = gated.state
    engine = Engine(gated, None, CONFIG)
    state.layer_keep[:, 1, 0] = 0.0
    state.select_bucket(0)
    engine.refresh_plan()
    engine.add_request("r", PROMPT, SamplingParams(max_tokens=6, ignore_eos=True))
    out = [t for e in engine.step() for t in e.token_ids]  # the prefill and its first token
    state.layer_keep.fill_(1.0)
    state.select_bucket(0)
    engine.refresh_plan()
    while engine.has_work():
        out.extend(t for e in engine.step() for t in e.token_ids)

    state.layer_keep[:, 1, 0] = 0.0
    state.select_bucket(0)
    with torch.inference_mode():
        step = gated.model(torch.tensor([PROMPT]), use_cache=True)
        expected = [int(step.logits[0, -1].argmax())]
        state.layer_keep.fill_(1.0)
        state.select_bucket(0)
        for _ in range(5):
            step = gated.model(torch.tensor([[expected[-1]]]), past_key_values=step.past_key_values,
                               use_cache=True)
            expected.append(int(step.logits[0, -1].argmax()))
    assert out == expected


def test_budget_change_reaches_the_next_step_without_captures_or_new_packs():
    from dynasparse_worker.gating.synthetic_plan import synthetic_table

    gated = install_gates(_tiny(2))
    synthetic_table(gated, gated.half_bytes(), [0.6, 0.35], 97, torch.device("cpu"))
    engine = Engine(gated, None, CONFIG)  # built after calibration: graphs know the depth plans
    runner = engine.runner
    engine.add_request("r", PROMPT, SamplingParams(max_tokens=30, ignore_eos=True))
    engine.step()  # prefill
    for budget in (0.6, 0.35, 1.0):  # warm every plan once (the CPU packs rows on first use)
        engine.apply_budget(budget)
        engine.step()
    packed = len(runner.gated_ops._packed)
    for budget in (0.35, 1.0, 0.6):
        engine.apply_budget(budget)  # what the server's actuator calls
        engine.step()
        wanted = runner.plan.variants[0]
        assert runner.last_variant[1] == wanted
        assert (wanted == DENSE) == (budget == 1.0)
    assert runner.captures == 0 and len(runner.gated_ops._packed) == packed
    engine.apply_budget(0.35)
    engine.step()
    assert runner.plan.variants[0][1] is not None, "the floor's plan skips halves"


def test_apply_budget_hands_the_runner_the_plan_the_device_state_holds():
    """The host plan is built from the planner's CPU plan, without reading the device back: it
    must describe exactly what the state's tensors now hold, at every level and with a KV cap."""
    from dynasparse_worker.engine.plans import read_plan
    from dynasparse_worker.gating.synthetic_plan import synthetic_table

    gated = install_gates(_tiny(2))
    synthetic_table(gated, gated.half_bytes(), [0.6, 0.35], 97, torch.device("cpu"))
    engine = Engine(gated, None, CONFIG)
    state = engine.runner.state
    for budget, cap in ((0.6, None), (0.35, None), (0.45, 16), (1.0, None)):
        applied = engine.apply_budget(budget, cap)
        assert applied.plan == read_plan(state, engine.runner.half_bytes)
        assert engine.runner.plan == applied.plan
        assert applied.budget == pytest.approx(float(state.budget))
        assert applied.expected_loss == pytest.approx(float(state.expected_loss))
    assert engine.apply_budget(0.35).plan.variants != engine.apply_budget(1.0).plan.variants


def test_kv_cap_keeps_the_sinks_and_the_most_recent_entries():
    torch.manual_seed(0)
    q = torch.randn(2, 4, 16)  # [B, H, D]
    k, v = torch.randn(3, 40, 2, 16), torch.randn(3, 40, 2, 16)  # [S, T, Hkv, D]
    slots, lens, starts = torch.tensor([2, 0]), torch.tensor([30, 12]), torch.tensor([22, 0])
    got = decode_attention_torch(q, k, v, slots, lens, starts, 0.25, sinks=4)
    for b, keep in enumerate([list(range(4)) + list(range(22, 30)), list(range(12))]):
        keys, values = k[slots[b], keep], v[slots[b], keep]  # [n, Hkv, D]
        query = q[b].view(2, 2, 16)  # [Hkv, G, D]
        probs = torch.softmax(torch.einsum("hgd,nhd->hgn", query, keys) * 0.25, -1)
        want = torch.einsum("hgn,nhd->hgd", probs, values).reshape(4, 16)
        assert torch.allclose(got[b], want, atol=1e-5)


def test_engine_kv_cap_ignores_entries_between_the_sinks_and_the_window():
    gated = install_gates(_tiny(3))
    engine = Engine(gated, None, CONFIG)
    gated.state.kv_cap.fill_(6)  # 4 sinks + the 2 most recent entries

    def run(corrupt: bool) -> list[int]:
        engine.add_request("r", PROMPT, SamplingParams(max_tokens=6, ignore_eos=True))
        out = [t for e in engine.step() for t in e.token_ids]  # prefill + first token
        if corrupt:  # entries 4..8 lie between the sinks and every later window: never read
            engine.runner.cache.k[:, :, 4:9] = 1e3
            engine.runner.cache.v[:, :, 4:9] = -1e3
        while engine.has_work():
            out.extend(t for e in engine.step() for t in e.token_ids)
        return out

    clean = run(False)
    assert run(True) == clean
    gated.state.kv_cap.zero_()
    assert run(True) != clean  # without the cap the same corruption changes the tokens


def test_bench_budgets_writes_speedups_losses_switch_costs_and_the_frontier(tmp_path):
    out = tmp_path / "sparse.json"
    code = main(["bench", "--shape", "tiny", "--device", "cpu", "--batch-sizes", "1",
                 "--budgets", "1,0.5,floor", "--prompt-len", "4", "--gen-len", "3", "--no-hf",
                 "--json", str(out), "--plot", str(tmp_path / "frontier.png")])
    assert code == 0
    result = json.loads(out.read_text())
    gated = [r for r in result["rows"] if r["engine"] == "dynasparse-gated"]
    assert [r["budget"] for r in gated] == [1.0, 0.5, 0.3]
    for row in gated:
        assert row["speedup"] > 0 and row["expected_loss"] >= 0 and row["ms_per_token"] > 0
    assert "gate_overhead" in gated[0] and gated[-1]["width_sparsity_target"] > 0
    assert result["calibration"]["kind"] == "synthetic"
    assert all(s["used_new_plan"] and s["captures_during"] == 0 for s in result["budget_switch"])
    assert (tmp_path / "frontier.png").stat().st_size > 0


@pytest.mark.parametrize("budgets", ["1,2", "0.5,x"])
def test_bench_refuses_budgets_outside_zero_one(budgets, capsys):
    assert main(["bench", "--shape", "tiny", "--device", "cpu", "--budgets", budgets]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def _tiny_gemma2(seed: int = 0):
    """3-layer Gemma 2 (local layers 0 and 2, window 8, soft caps that bind), norms randomised."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(seed)
    config = Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=3, head_dim=32,
                          num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                          max_position_embeddings=256, sliding_window=8, query_pre_attn_scalar=24,
                          attn_logit_softcapping=2.0, final_logit_softcapping=3.0)
    model = Gemma2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.3)
    return model


def test_gemma_engine_gives_the_gated_hf_models_tokens_under_width_and_depth_plans():
    gated = install_gates(_tiny_gemma2())
    state = gated.state
    dense = hf_greedy(gated.model, PROMPT, 12)
    state.thresholds[:, :, :] = 0.3  # every group drops its small channels
    state.layer_keep[:, 1, 1] = 0.0  # layer 1's MLP half is skipped
    state.layer_keep[:, 2, 0] = 0.0  # layer 2's (local) attention half too
    state.select_bucket(0)
    reference = hf_greedy(gated.model, PROMPT, 12)
    assert reference != dense, "the plan changes this model's tokens"
    engine = Engine(gated, None, CONFIG, ops=LinearOps(state))  # masked dense: exact sums
    assert _tokens(engine, 12) == reference
    assert bool((engine.runner.cache.k[2, 0, :len(PROMPT)].abs().sum((-1, -2)) > 0).all()), \
        "a skipped attention half still writes its keys"
    state.thresholds.zero_()
    state.layer_keep.fill_(1.0)
    engine.refresh_plan()
    assert _tokens(engine, 12) == dense  # back to dense, same engine


def test_gemma_budget_change_reaches_the_next_step_without_captures_or_new_packs():
    from dynasparse_worker.gating.synthetic_plan import synthetic_table

    gated = install_gates(_tiny_gemma2(1))
    synthetic_table(gated, gated.half_bytes(), [0.6, 0.35], 97, torch.device("cpu"))
    engine = Engine(gated, None, CONFIG)  # the default sparse-kernel ops, as Llama gets them
    runner = engine.runner
    engine.apply_budget(1.0)
    dense = _tokens(engine, 10)
    engine.apply_budget(0.35)
    sparse = _tokens(engine, 10)
    assert sparse != dense and runner.plan.variants[0][0], "the gated plan changed the tokens"
    packed = len(runner.gated_ops._packed)
    for budget in (1.0, 0.6, 0.35):
        engine.apply_budget(budget)
        _tokens(engine, 3)
        assert (runner.last_variant[1] == DENSE) == (budget == 1.0)
    assert runner.captures == 0 and len(runner.gated_ops._packed) == packed
    engine.apply_budget(0.35)
    assert _tokens(engine, 10) == sparse  # the same plan gives the same tokens again


def test_a_prompt_chunk_follows_the_plan_of_the_batch_bucket_its_length_falls_in():
    """A 10-token prefill reads rows like a decode step of 10 sequences, so it takes the depth plan
    of bucket 16, while decoding one sequence takes bucket 1's."""
    gated = install_gates(_tiny(2))
    state = gated.state
    state.thresholds.fill_(1e-6)  # gates on: the counting dispatch serves every projection
    wide = state.bucket_index(len(PROMPT))
    assert wide != state.bucket_index(1)
    state.layer_keep[wide, 1, 1] = 0.0  # layer 1's MLP skipped for 9-16 rows only
    ops = CountingOps(state)
    engine = Engine(gated, None, CONFIG, ops=ops)
    engine.add_request("r", PROMPT, SamplingParams(max_tokens=3, ignore_eos=True))
    engine.step()  # the prefill (one chunk) and its first token
    assert (1, 2) not in ops.calls and ops.calls[1, 0] == 1
    while engine.has_work():
        engine.step()  # two decode steps at batch 1
    assert ops.calls[1, 2] == 2 and ops.calls[1, 0] == 3


def test_the_synthetic_plan_follows_the_planner_width_at_one_sequence_depth_at_many():
    from dynasparse_worker.gating.synthetic_plan import synthetic_table

    config = _tiny(3).config
    config.num_hidden_layers = 6
    torch.manual_seed(3)
    from transformers import LlamaForCausalLM

    gated = install_gates(LlamaForCausalLM(config).eval())
    half_bytes = gated.half_bytes()
    table = synthetic_table(gated, half_bytes, [0.5], 97, torch.device("cpu"), depth_share=None)
    level = table.budgets.tolist().index(0.5)
    edges = list(table.bucket_edges)
    one, many = edges.index(1), edges.index(16)
    assert bool(table.layer_keep[level, one].eq(1).all()) and float(table.thresholds[level, one].min()) > 0
    skipped = sum(a * (1 - float(k[0])) + m * (1 - float(k[1]))
                  for (a, m), k in zip(half_bytes, table.layer_keep[level, many]))
    assert skipped > 0 and skipped <= 0.5 * sum(a + m for a, m in half_bytes)
    assert bool(torch.all(table.thresholds[1:] >= table.thresholds[:-1]))
