"""A worker serving a gated model: an operator budget reaches the `SparsityState` device tensors,
reports carry the calibrated floor and expected loss, the status its quality curve, and generation keeps working.

The plan table here is a small hand-made one (two levels), so the test needs no calibration run;
the gated model is a copy of the session's model, which stays ungated for the other tests."""

from __future__ import annotations

import copy
import dataclasses

import httpx
import pytest
import torch

from dynasparse_proto import control_pb2
from dynasparse_worker.gating import install_gates
from dynasparse_worker.gating.planner import PlanTable

pytestmark = pytest.mark.slow


def two_level_table(gated) -> PlanTable:
    state = gated.state
    nb, nl = len(state.bucket_edges), state.num_layers
    return PlanTable(
        bucket_edges=state.bucket_edges,
        budgets=torch.tensor([1.0, 0.5], dtype=torch.float64),
        thresholds=torch.stack([torch.zeros(nb, nl, 4), torch.full((nb, nl, 4), 0.02)]),
        layer_keep=torch.ones(2, nb, nl, 2),
        expected_loss=torch.tensor([[0.0] * nb, [0.4] * nb]),
        col_scale=[[torch.ones_like(state.col_scale(l, g)) for g in range(4)] for l in range(nl)],
    )


def test_operator_budget_reaches_the_gated_models_device_tensors(loaded_model, start_worker,
                                                                Session):
    model = copy.deepcopy(loaded_model.model)
    gated = install_gates(model)
    gated.attach(two_level_table(gated))
    loaded = dataclasses.replace(loaded_model, model=model)
    with start_worker(loaded=loaded, gated=gated) as w:
        session = Session(w.stub())
        try:
            session.send(epoch=1, sequence=1, target_budget=0.6, floor=0.2, ceiling=1.0)
            report = session.next_report(lambda r: r.applied_sequence == 1)
        finally:
            session.close()
        assert report.min_budget == pytest.approx(0.5) and report.floor == pytest.approx(0.5)
        assert report.applied_budget == pytest.approx(0.6)
        assert float(gated.state.budget) == pytest.approx(0.6)
        assert report.expected_quality_loss == pytest.approx(0.32, abs=1e-4)  # 0.8 of the way to 0.4
        # The quality curve rides in a stream's first report only; GetStatus always carries it.
        status = w.stub().GetStatus(control_pb2.StatusRequest(), timeout=10)
        curve = [(p.budget, p.expected_loss) for p in status.quality_curve]
        assert curve[0] == pytest.approx((0.5, 0.4)) and curve[-1] == pytest.approx((1.0, 0.0))
        r = httpx.post(f"{w.url}/v1/completions", timeout=60,
                       json={"prompt": "The capital of France is", "max_tokens": 4,
                             "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0

