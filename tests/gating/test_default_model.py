"""On the real default model (SmolLM2-135M-Instruct): the gates are transparent at budget 1.0, quality
degrades monotonically along the calibrated levels, and a compiled model never recompiles when the
budget moves. Marked slow: it loads the model once per session and reuses the cached calibration
(`dynasparse calibrate` or the first `dynasparse eval` writes it)."""

from __future__ import annotations

import pytest
import torch

from dynasparse_worker import corpora
from dynasparse_worker.gating import install_gates
from dynasparse_worker.gating.artifact import calibration_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gated_default(default_model):
    ids = default_model.tokenizer("The capital of France is Paris. It is known for", return_tensors="pt").input_ids
    with torch.no_grad():
        reference = default_model.model(ids).logits  # [1, T, V] before any gate exists
    gated = install_gates(default_model.model)
    calibration_for(default_model, gated, progress=False)
    return gated, ids, reference


def test_budget_one_reproduces_the_ungated_logits(gated_default):
    gated, ids, reference = gated_default
    gated.set_budget(1.0)
    with torch.no_grad():
        logits = gated.model(ids).logits
    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-5)


def test_kl_to_dense_grows_monotonically_as_the_budget_shrinks(gated_default, default_model):
    gated, _, _ = gated_default
    ids = corpora.token_sequences(default_model.tokenizer, corpora.fortunes_text(), 1, 128, "fortunes")
    with torch.no_grad():
        gated.set_budget(1.0)
        dense = gated.model(ids).logits.log_softmax(-1)  # [1, T, V]
        kls = []
        for budget in (0.9, 0.75, 0.6, 0.45, 0.3):
            gated.set_budget(budget)
            sparse = gated.model(ids).logits.log_softmax(-1)
            kls.append(float((dense.exp() * (dense - sparse)).sum(-1).mean()))
    gated.set_budget(1.0)
    assert kls == sorted(kls) and kls[0] > 0


def test_compiled_default_model_does_not_recompile_across_budgets(gated_default):
    gated, ids, reference = gated_default
    torch._dynamo.reset()
    compiled = torch.compile(gated.model, fullgraph=True, backend="aot_eager")
    outputs = []
    with torch.no_grad():
        gated.set_budget(1.0)
        outputs.append(compiled(ids, use_cache=False).logits)  # the one compilation
        with torch._dynamo.config.patch(error_on_recompile=True):
            for budget in (0.8, 0.5, 0.3, 1.0):
                gated.set_budget(budget)
                outputs.append(compiled(ids, use_cache=False).logits)
    assert not torch.allclose(outputs[0], outputs[2], atol=1e-3)
    torch.testing.assert_close(outputs[-1], reference, rtol=0, atol=1e-4)
