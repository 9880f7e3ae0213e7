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
    engine.refresh_plan()
    sparse = _tokens(engine, prompt)
    assert sparse != dense
    state.thresholds.zero_()
    state.layer_keep[:, 1, 1] = 0.0  # skip the last layer's MLP half
    engine.refresh_plan()
    skipped = _tokens(engine, prompt)
    assert skipped != dense and skipped != sparse
    state.layer_keep.fill_(1.0)
    engine.refresh_plan()
    assert _tokens(engine, prompt) == dense


def test_kv_cap_limits_decode_attention_to_the_recent_window(tiny_llama):
    config = EngineConfig(max_batch_size=2, max_seq_len=64, kv_capacity_tokens=128)
    prompt = list(range(1, 30))
    state = _state(tiny_llama)
    engine = Engine(tiny_llama, None, config, state=state)
    dense = _tokens(engine, prompt)
    state.kv_cap.fill_(4)
    engine.refresh_plan()
    capped = _tokens(engine, prompt)
    assert capped[0] == dense[0]  # the first token comes from the (uncapped) prefill
    assert capped != dense


def _table(widths_and_depths):
    """A two-layer PlanTable stand-in: budgets and layer_keep per level (bucket 0 only)."""
    import torch

    from dynasparse_worker.gating.planner import PlanTable

    budgets = [1.0] + [b for b, _ in widths_and_depths]
    keep = torch.ones(len(budgets), 1, 2, 2)
    for level, (_, skip_mlp_of_layer_1) in enumerate(widths_and_depths, start=1):
        if skip_mlp_of_layer_1:
            keep[level, 0, 1, 1] = 0.0
    zeros = torch.zeros(len(budgets), 1, 2, 4)
    return PlanTable((1,), torch.tensor(budgets, dtype=torch.float64), zeros, keep,
                     torch.zeros(len(budgets), 1), [[torch.ones(1)] * 4] * 2)


def test_levels_sharing_a_depth_plan_get_one_graph_per_kernel_choice():
    from dynasparse_worker.engine.plans import variants_of

    half_bytes = [(100, 300), (100, 300)]
    table = _table([(0.75, False), (0.5, False), (0.3, False), (0.2, True)])
    crossover = 0.4  # below it the dense kernel wins: the signature says so
    signature = lambda width: ("sparse" if width >= crossover else "dense",)  # noqa: E731
    found = variants_of(table, 0, half_bytes, signature)
    no_depth = {sig: width for (variant, sig), width in found.items() if variant == (True, None)}
    # 0.75 (25 % skipped) no longer shares the floor-ward graph built for 70 %: it runs dense kernels
    assert no_depth == {("dense",): 0.25, ("sparse",): 0.7}
    depth = [key for key in found if key[0][1] is not None]
    assert len(depth) == 1 and depth[0][1] == ("sparse",)


def test_a_plan_falls_back_to_a_graph_that_computes_the_same_result():
    from dynasparse_worker.engine.plans import DENSE, fallback

    depth = ((True, True), (True, False))
    captured = {(DENSE, ()), ((True, None), ("dense",)), ((True, None), ("sparse",)),
                ((True, depth), ("sparse",))}
    assert fallback(DENSE, ("dense",), captured) == (DENSE, ())
    assert fallback((True, None), ("dense",), captured) == ((True, None), ("dense",))
    # an ungated depth plan runs on its gated twin (thresholds all zero), whatever its kernels
    assert fallback((False, depth), ("dense",), captured) == ((True, depth), ("sparse",))
    assert fallback((True, ((False, True), (True, True))), ("dense",), captured) is None
