"""What one request may cost a real worker on loopback: sampling fields within bounds the engine can
hold, bodies within a size and a time, prompts within what the context could read, and every refusal
an OpenAI error body — without harming the requests already in flight."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from abuse_clients import is_openai_error, send_oversized, send_trickling

pytestmark = pytest.mark.slow


def post(worker, body, path: str = "/v1/completions", **kw) -> httpx.Response:
    if isinstance(body, (bytes, str)):
        return httpx.post(f"{worker.url}{path}", content=body, timeout=60,
                          headers={"content-type": "application/json", **kw.pop("headers", {})},
                          **kw)
    return httpx.post(f"{worker.url}{path}", json=body, timeout=60, **kw)


def greedy_stream(worker, prompt: str, tokens: int) -> tuple[str, int, bool]:
    """(text, completion tokens, saw an error event) of one streamed greedy completion."""
    text, used, error = "", 0, False
    with httpx.stream("POST", f"{worker.url}/v1/completions", timeout=120,
                      json={"prompt": prompt, "max_tokens": tokens, "temperature": 0,
                            "ignore_eos": True, "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                error = True
                continue
            text += chunk["choices"][0]["text"] if chunk["choices"] else ""
            used = (chunk.get("usage") or {}).get("completion_tokens", used)
    return text, used, error


# ---- sampling fields ------------------------------------------------------------------------------

def test_a_seed_beyond_64_bits_is_rejected_with_400_and_streams_in_flight_carry_on(worker):
    prompts = ["Once upon a time", "The history of Rome"]
    alone = [greedy_stream(worker, p, 24) for p in prompts]
    with ThreadPoolExecutor(3) as pool:
        streams = [pool.submit(greedy_stream, worker, p, 24) for p in prompts]
        time.sleep(0.3)
        bad_seed = post(worker, {"prompt": "hi", "seed": 2**70, "temperature": 1, "max_tokens": 4})
        bad_top_k = post(worker, {"prompt": "hi", "top_k": 2**63, "temperature": 1,
                                  "max_tokens": 4})
        together = [s.result() for s in streams]
    assert bad_seed.status_code == 400 and bad_seed.json()["error"]["param"] == "seed"
    assert bad_top_k.status_code == 400 and bad_top_k.json()["error"]["param"] == "top_k"
    assert together == alone and all(used == 24 and not err for _, used, err in together)


@pytest.mark.parametrize("body, param", [
    (b'{"prompt": "hi", "seed": 18446744073709551616}', "seed"),  # 2**64
    (b'{"prompt": "hi", "seed": -9223372036854775809}', "seed"),  # -2**63 - 1
    (b'{"prompt": "hi", "top_k": -1}', "top_k"),
    (b'{"prompt": "hi", "top_k": 2147483648}', "top_k"),
    (b'{"prompt": "hi", "max_tokens": 1099511627776}', "max_tokens"),
    (b'{"prompt": "hi", "temperature": NaN}', "temperature"),
    (b'{"prompt": "hi", "temperature": 1e400}', "temperature"),
    (b'{"prompt": "hi", "top_p": Infinity}', "top_p"),
    (b'{"prompt": "hi", "top_p": 0}', "top_p"),
    (b'{"prompt": "hi", "presence_penalty": 0.5}', "presence_penalty"),
    (b'{"prompt": "hi", "stop": ["' + b"x" * 300 + b'"]}', "stop"),
])
def test_sampling_fields_out_of_bounds_get_400_naming_the_field(worker, body, param):
    r = post(worker, body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_chat_sampling_fields_are_bounded_too(worker):
    r = post(worker, {"messages": [{"role": "user", "content": "hi"}], "seed": 2**64,
                      "temperature": 1}, path="/v1/chat/completions")
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed"


def test_signed_and_unsigned_64_bit_seeds_sample_like_their_low_bits(worker):
    def sampled(seed: int) -> str:
        r = post(worker, {"prompt": "My favourite animal is", "max_tokens": 8, "temperature": 1.5,
                          "seed": seed})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    # all three have the same low 32 bits, which is what the sampler hashes
    assert sampled(2**64 - 1) == sampled(-1) == sampled(2**63 - 1)


# ---- body size and time ---------------------------------------------------------------------------

@pytest.fixture
def small_limits_worker(start_worker):
    with start_worker(max_body_bytes=64 * 1024, body_timeout_s=0.5) as w:
        yield w


def test_a_body_announced_over_the_cap_gets_413_before_it_is_read(small_limits_worker):
    r = send_oversized(small_limits_worker.url, "/v1/completions", 8 * 1024 * 1024)
    assert r.status == 413 and is_openai_error(r.body) and r.closed
    assert "--max-body-bytes" in json.loads(r.body)["error"]["message"]


def test_a_chunked_body_growing_over_the_cap_gets_413_once_it_passes_it(small_limits_worker):
    r = send_oversized(small_limits_worker.url, "/v1/chat/completions", 8 * 1024 * 1024,
                       chunked=True, chunk=16 * 1024)
    assert r.status == 413 and is_openai_error(r.body) and r.closed


def test_a_trickled_body_gets_408_and_its_connection_closed(small_limits_worker):
    body = json.dumps({"prompt": "hello", "max_tokens": 2}).encode()
    r = send_trickling(small_limits_worker.url, "/v1/completions", body, bytes_per_s=10)
    assert r.status == 408 and is_openai_error(r.body) and r.closed
    assert 0.4 < r.seconds < 3.0
    ok = post(small_limits_worker, {"prompt": "hello", "max_tokens": 2, "temperature": 0})
    assert ok.status_code == 200  # the worker carries on


def test_a_body_under_the_cap_arriving_in_time_is_served(small_limits_worker):
    padding = "x" * (40 * 1024)  # an ignored field, well under the 64 KiB cap
    r = post(small_limits_worker, {"prompt": "hello", "max_tokens": 2, "temperature": 0,
                                   "user": padding})
    assert r.status_code == 200


def test_a_prompt_longer_in_characters_than_the_context_could_hold_is_refused(worker):
    r = post(worker, {"prompt": "a" * 20000, "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert "characters" in r.json()["error"]["message"]
    r = post(worker, {"messages": [{"role": "user", "content": "b" * 5000}] * 4},
             path="/v1/chat/completions")
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_a_body_of_many_small_json_values_is_refused_before_parsing(worker):
    body = b'{"prompt": "hi", "metadata": [' + b"1," * 200_000 + b"1]}"
    r = post(worker, body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"


# ---- errors that used to be plain 500s ------------------------------------------------------------

def test_a_lone_surrogate_in_a_prompt_gets_400(worker):
    for body, path, param in [(b'{"prompt": "hi \\ud800 there", "max_tokens": 2}',
                               "/v1/completions", "prompt"),
                              (b'{"messages": [{"role": "user", "content": "\\udfff"}]}',
                               "/v1/chat/completions", "messages")]:
        r = post(worker, body, path=path)
        assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_json_nested_100k_deep_gets_400(worker):
    r = post(worker, b'{"prompt": "hi", "user": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"


def test_a_non_ascii_bearer_token_is_a_wrong_key_not_an_error(tight_worker):
    for token in ["sékret".encode("latin-1"), "ключ".encode(), b"\xff\xfe"]:
        r = httpx.get(f"{tight_worker.url}/v1/models",
                      headers=[(b"authorization", b"Bearer " + token)])
        assert r.status_code == 401 and is_openai_error(r.content)


def test_unknown_paths_and_methods_answer_in_openai_shape(worker):
    r = httpx.get(f"{worker.url}/v1/nothing-here")
    assert r.status_code == 404 and is_openai_error(r.content)
    r = httpx.get(f"{worker.url}/v1/completions")
    assert r.status_code == 405 and is_openai_error(r.content)


def test_an_unexpected_error_becomes_an_openai_500_and_the_worker_carries_on(start_worker):
    class BrokenTokenizer:
        chat_template = None

        def encode(self, *args, **kwargs):
            raise RuntimeError("tokenizer blew up")

    with start_worker() as w:
        real, w.runtime.ctx.tokenizer = w.runtime.ctx.tokenizer, BrokenTokenizer()
        broken = post(w, {"prompt": "hello", "max_tokens": 2})
        w.runtime.ctx.tokenizer = real
        fine = post(w, {"prompt": "hello", "max_tokens": 2, "temperature": 0})
    assert broken.status_code == 500 and is_openai_error(broken.content)
    assert broken.json()["error"]["type"] == "server_error"
    assert fine.status_code == 200
