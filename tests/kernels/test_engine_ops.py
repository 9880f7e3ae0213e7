"""`SparseLinearOps` serves the engine's `project` calls under the real `SparsityState`'s gates.

Same contract as the engine's default `LinearOps`: `F.linear(x masked by |x|·col_scale >
thresholds[bucket, layer, group], weight, bias)`, here through packed input-major weights.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynasparse_worker.gating.state import SparsityState
from dynasparse_worker.kernels.engine_ops import SparseLinearOps


def _expected(x, weight, bias, state, bucket, layer, group):
    keep = x.abs() * state.col_scale(layer, group) > state.thresholds[bucket, layer, group]
    return F.linear(torch.where(keep, x, torch.zeros_like(x)), weight, bias)


def _state():
    return SparsityState([[32, 32, 32, 64], [32, 32, 32, 64]])  # 2 layers, hidden 32, mlp 64


def test_projection_matches_the_engine_contract_on_every_group(gen):
    state = _state()
    state.thresholds.uniform_(0.2, 1.0, generator=gen)  # as set_budget would, in place
    state.col_scale(1, 2).uniform_(0.5, 1.5, generator=gen)
    ops = SparseLinearOps(state)
    for group, (n_out, n_in) in enumerate([(48, 32), (32, 32), (128, 32), (32, 64)]):
        weight = torch.randn(n_out, n_in, generator=gen)
        bias = torch.randn(n_out, generator=gen) if group == 0 else None
        for rows in (1, 3):
            x = torch.randn(rows, n_in, generator=gen)
            y = ops.project(x, weight, bias, layer=1, group=group, bucket=2)
            ref = _expected(x, weight, bias, state, 2, 1, group)
            assert torch.allclose(y, ref, atol=1e-5, rtol=1e-5), (group, rows, gen.initial_seed())


def test_budget_change_in_place_takes_effect_without_repacking(gen):
    state = _state()
    ops = SparseLinearOps(state, policy=lambda rows, group: "sparse")
    weight = torch.randn(32, 64, generator=gen)
    x = torch.randn(1, 64, generator=gen)
    dense = ops.project(x, weight, None, layer=0, group=3, bucket=0)
    packed = dict(ops._packed)
    state.thresholds[0, 0, 3].fill_(0.8)
    sparse = ops.project(x, weight, None, layer=0, group=3, bucket=0)
    assert ops._packed == packed  # same packed weights: nothing rebuilt
    assert torch.allclose(dense, x @ weight.t(), atol=1e-5)
    assert torch.allclose(sparse, _expected(x, weight, None, state, 0, 0, 3), atol=1e-5)
    assert not torch.allclose(sparse, dense)


def test_sparse_and_dense_policies_give_the_same_result(gen):
    state = _state()
    state.thresholds.fill_(0.6)
    weight = torch.randn(40, 32, generator=gen)
    x = torch.randn(2, 32, generator=gen)
    ys = [SparseLinearOps(state, policy=lambda r, g, m=m: m).project(x, weight, None, 0, 0, 1)
          for m in ("sparse", "dense")]
    assert torch.allclose(ys[0], ys[1], atol=1e-5)


def test_bf16_cpu_packing_stays_within_bf16_error(gen):
    state = _state()
    state.thresholds.fill_(0.5)
    ops = SparseLinearOps(state, cpu_dtype=torch.bfloat16)
    weight = torch.randn(64, 32, generator=gen) / 6
    x = torch.randn(1, 32, generator=gen)
    y = ops.project(x, weight, None, layer=0, group=2, bucket=0)
    ref = _expected(x, weight, None, state, 0, 0, 2)
    assert y.dtype == torch.float32
    assert float((y - ref).norm() / ref.norm()) < 1e-2


def test_the_dispatch_reads_its_devices_crossover_table_before_its_first_call():
    cuda = SparseLinearOps(None, expected_sparsity=0.5, device_type="cuda")
    cpu = SparseLinearOps(None, expected_sparsity=0.5)
    assert cuda.policy(1, "attn_in") == "dense"  # in the engine on the H200 q|k|v pays from 65 %
    assert cpu.policy(1, "attn_in") == "sparse"  # the CPU's bag path pays from 20 %


def _gated_case(device):
    torch.manual_seed(0)
    state = SparsityState([[64, 64, 64, 128]]).to(device)
    state.thresholds.fill_(0.5)
    ops = SparseLinearOps(state, policy=lambda rows, group: "sparse", device_type=device)
    gate_up = (torch.randn(256, 64) / 8).to(torch.bfloat16).to(device)  # [2I, hidden]
    x = torch.randn(2, 64).to(torch.bfloat16).to(device)  # [N, hidden]
    return ops, gate_up, x


def test_gate_up_leaves_the_cpu_to_the_engines_own_silu_mul():
    ops, gate_up, x = _gated_case("cpu")
    assert ops.project_gated(x, gate_up, F.silu, 0, 0) is None


@pytest.mark.gpu
def test_gate_up_runs_silu_mul_inside_the_sparse_kernel_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    ops, gate_up, x = _gated_case("cuda")
    y = ops.project_gated(x, gate_up, F.silu, 0, 0)  # [N, I]
    xm = torch.where(x.abs() > 0.5, x, torch.zeros_like(x)).double()  # the contract's kept channels
    gate, up = gate_up.double().chunk(2, dim=0)
    expected = F.silu(xm @ gate.t()) * (xm @ up.t())  # [N, I]
    assert y.shape == (2, 128)
    assert float((y.double() - expected).norm() / expected.norm()) < 1e-2
    assert ops._packed[0, 2].gated


@pytest.mark.parametrize("kernel, device", [("compact", "cpu"), ("listed", "cpu")])
def test_the_norm_is_asked_to_list_channels_only_for_the_listed_kernel_on_cuda(gen, kernel, device):
    state = _state()
    state.thresholds.fill_(0.5)
    ops = SparseLinearOps(state, policy=lambda rows, group: "sparse", kernel=kernel)
    ops.project(torch.randn(1, 32, generator=gen), torch.randn(48, 32, generator=gen), None, 0, 0, 0)
    assert ops.input_gate(0, 0, 0, 1, torch.device(device)) is None
    assert not ops._take_prelisted(0, 0), "a refused gate leaves no list for the next call"


@pytest.mark.gpu
def test_a_one_token_listed_projection_reads_the_list_its_norm_wrote_on_cuda(gen):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from dynasparse_worker.engine.fused import add_rms_norm

    state = _state().cuda()
    state.thresholds.fill_(0.5)
    ops = SparseLinearOps(state, policy=lambda rows, group: "sparse", kernel="listed",
                          device_type="cuda")
    weight = torch.randn(48, 32, generator=gen).cuda()
    residual = torch.randn(1, 32, generator=gen).cuda()
    norm_w = torch.ones(32, device="cuda")
    ops.project(residual, weight, None, 0, 0, 0)  # first call packs and allocates the workspace
    gate = ops.input_gate(0, 0, 0, 1, residual.device)
    assert gate is not None
    h, _ = add_rms_norm(None, residual, norm_w, 1e-5, gate=gate)
    y = ops.project(h, weight, None, 0, 0, 0)
    assert torch.allclose(y, _expected(h, weight, None, state, 0, 0, 0), atol=1e-3, rtol=1e-3)
