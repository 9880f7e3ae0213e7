"""The batched detokenizer gives the tokenizer's own text, token by token, on both of its paths."""

from __future__ import annotations

import random

import pytest

from dynasparse_worker.engine.detokenizer import Detokenizer, TextState, Update


@pytest.fixture(scope="module")
def tokenizer(default_model):
    return default_model.tokenizer


@pytest.mark.parametrize("path", ["byte table", "decode windows"])
def test_streamed_text_equals_decoding_the_whole_sequence(tokenizer, path):
    detok = Detokenizer(tokenizer)
    if path == "decode windows":
        detok._bytes = None
    else:
        assert detok._bytes is not None, "SmolLM2's byte-level BPE gets the table"
    rng = random.Random(1)
    seqs = [[rng.randrange(len(tokenizer)) for _ in range(40)] for _ in range(8)]
    states = [TextState() for _ in seqs]
    texts = [""] * len(seqs)
    for step in range(40):
        out = detok.step([Update(s, [q[step]], step == 39) for s, q in zip(states, seqs)])
        texts = [t + o for t, o in zip(texts, out)]
    assert texts == [tokenizer.decode(q, skip_special_tokens=True) for q in seqs]


def test_a_stop_string_cuts_the_text_and_is_never_sent(tokenizer):
    detok = Detokenizer(tokenizer)
    ids = tokenizer.encode("The capital of France is Paris. It is big.")
    state = TextState(stops=("Paris",))
    sent = "".join(detok.step([Update(state, [t], False)])[0] for t in ids)
    assert state.stopped and sent == "The capital of France is "
