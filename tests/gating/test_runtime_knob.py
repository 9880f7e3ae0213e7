"""The budget is a runtime knob: dense at 1.0, in-place updates, halves skippable, no re-trace."""

from __future__ import annotations

import pytest
import torch

from dynasparse_worker.errors import UserError
from dynasparse_worker.gating import install_gates
from dynasparse_worker.gating.gated_linear import GatedLinear
from dynasparse_worker.gating.planner import PlanTable, dense_plan


def _toy_table(gated, floor=0.5):
    """A hand-made two-level table: dense, and the block-input groups thresholded at 0.5 (the
    attention/MLP inner activations of a tiny random model are ~0.01, so they stay dense)."""
    nb, nl = len(gated.state.bucket_edges), gated.structure.num_layers
    thresholds = torch.zeros(2, nb, nl, 4)
    thresholds[1, :, :, 0] = 0.5
    thresholds[1, :, :, 2] = 0.5
    keep = torch.ones(2, nb, nl, 2)
    loss = torch.tensor([[0.0] * nb, [0.3] * nb])
    scales = [[torch.ones(gated.structure.blocks[l].in_features(g)) for g in range(4)] for l in range(nl)]
    return PlanTable(gated.state.bucket_edges, torch.tensor([1.0, floor], dtype=torch.float64),
                     thresholds, keep, loss, scales)


def test_gates_replace_linear_submodules_and_share_their_parameters(make_tiny):
    model = make_tiny("llama")
    weight = model.model.layers[0].self_attn.q_proj.weight
    keys = set(model.state_dict())
    install_gates(model)
    gated = model.model.layers[0].self_attn.q_proj
    assert isinstance(gated, GatedLinear) and gated.weight is weight
    assert set(model.state_dict()) == keys  # state buffers are non-persistent


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2"])
def test_budget_one_gives_the_ungated_logits(make_tiny, family):
    model = make_tiny(family)
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        reference = model(ids).logits
        install_gates(model).set_budget(1.0)
        gated = model(ids).logits
    torch.testing.assert_close(gated, reference, rtol=0, atol=1e-6)


def test_set_budget_updates_buffers_in_place_and_changes_outputs(make_tiny):
    model = make_tiny("llama")
    gated = install_gates(model)
    gated.attach(_toy_table(gated))
    pointers = {name: buf.data_ptr() for name, buf in gated.state.named_buffers()}
    ids = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        dense = model(ids).logits
        gated.set_budget(0.5)
        sparse = model(ids).logits
        gated.set_budget(0.75)
        middle = model(ids).logits
    assert pointers == {name: buf.data_ptr() for name, buf in gated.state.named_buffers()}
    assert not torch.allclose(dense, sparse) and not torch.allclose(sparse, middle)
    assert float(gated.state.thresholds[0, 0, 0]) == pytest.approx(0.25)  # interpolated between levels


def test_zero_layer_keep_removes_that_half_from_the_residual_stream(make_tiny):
    model = make_tiny("llama")
    gated = install_gates(model)
    ids = torch.randint(0, 256, (1, 6))
    plan = dense_plan(gated.state)
    plan.layer_keep[:, 1, 1] = 0.0  # skip the MLP of layer 1
    gated.apply(plan)
    captured = {}
    handle = model.model.layers[1].mlp.register_forward_hook(lambda m, a, out: captured.setdefault("y", out))
    with torch.no_grad():
        model(ids)
    handle.remove()
    assert torch.count_nonzero(captured["y"]) == 0


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.5])
def test_budget_outside_unit_interval_is_a_user_error(make_tiny, budget):
    gated = install_gates(make_tiny("llama"))
    with pytest.raises(UserError, match="outside"):
        gated.set_budget(budget)


def test_budget_below_the_calibrated_floor_is_a_user_error(make_tiny):
    gated = install_gates(make_tiny("llama"))
    gated.attach(_toy_table(gated, floor=0.5))
    with pytest.raises(UserError, match="floor"):
        gated.set_budget(0.4)


def test_compiled_model_is_not_recompiled_when_the_budget_moves(make_tiny):
    torch._dynamo.reset()
    model = make_tiny("llama")
    gated = install_gates(model)
    gated.attach(_toy_table(gated))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    ids = torch.randint(0, 256, (1, 8))
    outputs = []
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for budget in (1.0, 0.9, 0.6, 0.5, 1.0):
            gated.set_budget(budget)
            outputs.append(compiled(ids, use_cache=False).logits)
    assert not torch.allclose(outputs[0], outputs[2])
    torch.testing.assert_close(outputs[0], outputs[-1])
