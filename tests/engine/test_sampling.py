"""Device sampling: greedy at temperature 0, cuts by top-k / top-p, seeded and batch-independent."""

from __future__ import annotations

import torch

from dynasparse_worker.engine.sampling import sample, uniform_noise


def _params(batch: int, temperature: float, top_p: float = 1.0, top_k: int = 0, seed: int = 5):
    return (torch.full((batch,), temperature), torch.full((batch,), top_p),
            torch.full((batch,), top_k), torch.full((batch,), seed), torch.arange(batch))


def test_temperature_zero_is_argmax_and_top_k_one_is_argmax():
    logits = torch.randn(6, 50)
    assert torch.equal(sample(logits, *_params(6, 0.0)), logits.argmax(-1))
    assert torch.equal(sample(logits, *_params(6, 1.5, top_k=1)), logits.argmax(-1))
    assert torch.equal(sample(logits, *_params(6, 1.0, top_p=1e-6)), logits.argmax(-1))


def test_samples_follow_the_softmax_and_respect_top_k():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(4000, 1)  # [N, 4]
    temperature, top_p, top_k, seeds, _ = _params(4000, 1.0)
    steps = torch.arange(4000)
    counts = torch.bincount(sample(logits, temperature, top_p, top_k, seeds, steps), minlength=4)
    expected = torch.softmax(logits[0], -1) * 4000
    assert ((counts - expected).abs() < 5 * expected.sqrt() + 5).all(), counts
    cut = sample(logits, temperature, top_p, torch.full((4000,), 2), seeds, steps)
    assert set(cut.tolist()) == {0, 1}


def test_noise_depends_only_on_seed_step_and_token():
    ids = torch.arange(1000)[None, :].repeat(2, 1)  # [2, V]
    a = uniform_noise(torch.tensor([1, 2]), torch.tensor([7, 7]), ids)
    b = uniform_noise(torch.tensor([1, 3]), torch.tensor([7, 7]), ids)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
    assert 0 < float(a.min()) and float(a.max()) < 1 and abs(float(a.mean()) - 0.5) < 0.03
