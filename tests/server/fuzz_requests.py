"""Hypothesis strategies for request bodies to /v1/completions and /v1/chat/completions: valid ones
(max_tokens 1, so admitted requests are cheap), valid ones with one field swapped for garbage,
and broken bytes (truncated, not UTF-8, not an object, nested deep, NaN, lone surrogates)."""

from __future__ import annotations

import json

from hypothesis import strategies as st

VOCAB = 49152  # the default model's vocabulary
COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"

EDGE_INTS = [0, 1, -1, 2, 255, 256, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63,
             2**64 - 1, 2**64, 2**70, -(2**63), -(2**63) - 1, 10**30]
EDGE_FLOATS = [0.0, -0.0, 1e-300, 5e-324, 0.5, 1.0, 2.0, 2.0000001, -1.0, 1e308, float("nan"),
               float("inf"), float("-inf")]
FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature",
          "top_p", "top_k", "n", "stream", "stream_options", "stop", "seed", "ignore_eos",
          "presence_penalty", "frequency_penalty", "user", "echo", "logprobs", "suffix"]

short_text = st.text(max_size=24)  # no lone surrogates: those come from `garbage`
lone_surrogate = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)

garbage = st.recursive(
    st.one_of(st.none(), st.booleans(), st.sampled_from(EDGE_INTS), st.integers(),
              st.sampled_from(EDGE_FLOATS), st.floats(), short_text,
              st.lists(lone_surrogate, min_size=1, max_size=3).map("x".join)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(short_text, inner, max_size=3)),
    max_leaves=8,
)

sampling = {
    "temperature": st.one_of(st.just(0.0), st.floats(0.0, 2.0)),
    "top_p": st.floats(0.01, 1.0),
    "top_k": st.one_of(st.integers(0, 200), st.sampled_from([VOCAB, 2**31 - 1])),
    "seed": st.one_of(st.none(), st.integers(-(2**63), 2**64 - 1)),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "stop": st.one_of(st.none(), st.text(min_size=1, max_size=4),
                      st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=4)),
    "ignore_eos": st.booleans(),
    "model": short_text,
    "user": short_text,
    "n": st.just(1),
}

prompt = st.one_of(
    st.text(min_size=1, max_size=60),
    st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=24),
    st.text(min_size=1, max_size=30).map(lambda t: [t]),
)

message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant"]),
     "content": st.one_of(st.text(max_size=40),
                          st.lists(st.fixed_dictionaries({"type": st.just("text"),
                                                          "text": st.text(max_size=20)}),
                                   max_size=2))})

valid_completion = st.fixed_dictionaries(
    {"prompt": prompt, "max_tokens": st.just(1)}, optional=sampling)
valid_chat = st.fixed_dictionaries(
    {"messages": st.lists(message, min_size=1, max_size=3),
     "max_tokens": st.just(1)}, optional=sampling)


@st.composite
def one_field_wrong(draw, valid):
    body = dict(draw(valid))
    body[draw(st.one_of(st.sampled_from(FIELDS), short_text))] = draw(garbage)
    return body


def _encode(body) -> bytes:
    return json.dumps(body, allow_nan=True).encode()  # NaN/Infinity literals, \udXXX escapes


@st.composite
def broken_bytes(draw, valid):
    raw = _encode(draw(valid))
    how = draw(st.sampled_from(["truncate", "flip", "not_utf8", "not_object", "empty", "deep",
                                "trailing"]))
    if how == "truncate":
        return raw[:draw(st.integers(0, max(0, len(raw) - 1)))]
    if how == "flip":
        i = draw(st.integers(0, len(raw) - 1))
        return raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1:]
    if how == "not_utf8":
        return raw[:-1] + b'"\xff\xfe"}'
    if how == "not_object":
        return _encode(draw(garbage))
    if how == "empty":
        return b""
    if how == "deep":
        depth = draw(st.sampled_from([50, 900, 5000, 100_000]))
        return raw[:-1] + b', "user": ' + b"[" * depth + b"]" * depth + b"}"
    return raw + b" {}"


@st.composite
def request(draw) -> tuple[str, bytes]:
    """(path, body bytes): a third valid, half one field wrong (some still valid), the rest
    broken bytes."""
    path = draw(st.sampled_from([COMPLETIONS, CHAT]))
    valid = valid_completion if path == COMPLETIONS else valid_chat
    kind = draw(st.sampled_from(["valid", "valid", "wrong_field", "wrong_field", "wrong_field",
                                 "broken"]))
    if kind == "valid":
        return path, _encode(draw(valid))
    if kind == "wrong_field":
        return path, _encode(draw(one_field_wrong(valid)))
    return path, draw(broken_bytes(valid))
