"""The OpenAI-compatible HTTP API on a real worker on loopback, driven by the official `openai`
client and by raw HTTP for the error cases."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow


def client(worker, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{worker.url}/v1", api_key=api_key, max_retries=0, timeout=60)


def test_completion_answers_with_text_and_usage(worker):
    out = client(worker).completions.create(model="default", prompt="The capital of France is",
                                            max_tokens=6, temperature=0)
    assert "Paris" in out.choices[0].text
    assert out.choices[0].finish_reason in ("length", "stop")
    assert out.usage.prompt_tokens == 5 and 0 < out.usage.completion_tokens <= 6
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_streamed_completion_matches_the_plain_one_and_ends_with_usage(worker):
    c = client(worker)
    plain = c.completions.create(model="m", prompt="One, two, three,", max_tokens=8, temperature=0)
    chunks = list(c.completions.create(model="m", prompt="One, two, three,", max_tokens=8,
                                       temperature=0, stream=True))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == plain.choices[0].text
    final = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason][-1]
    assert final.usage is not None and final.usage.completion_tokens == plain.usage.completion_tokens


def test_chat_answers_through_the_chat_template(worker):
    out = client(worker).chat.completions.create(
        model="default", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=8, temperature=0)
    assert out.choices[0].message.role == "assistant"
    assert "Paris" in out.choices[0].message.content
    assert out.usage.prompt_tokens > 10  # the template wraps the question


def test_streamed_chat_honours_include_usage(worker):
    stream = client(worker).chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Say hello."}], max_tokens=6,
        temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    finals = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].usage == chunks[-1].usage


def test_concurrent_clients_each_get_their_own_greedy_answer(worker):
    prompts = ["The capital of France is", "1, 2, 3, 4,", "Roses are red,", "The sun rises in the"]
    c = client(worker)

    def ask(prompt: str) -> str:
        return c.completions.create(model="m", prompt=prompt, max_tokens=6,
                                    temperature=0).choices[0].text

    alone = [ask(p) for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(ask, prompts))
    assert together == alone


def test_models_lists_the_served_model(worker):
    ids = [m.id for m in client(worker).models.list()]
    assert ids == ["SmolLM2-135M-Instruct"]


@pytest.mark.parametrize("body, param", [
    (b'{"prompt": "hi", "max_tokens": ', "body"),
    (b'["not", "an", "object"]', "body"),
    (b'{"max_tokens": 4}', "prompt"),
    (b'{"prompt": "hi", "max_tokens": 0}', "max_tokens"),
    (b'{"prompt": "hi", "temperature": 7}', "temperature"),
    (b'{"prompt": "hi", "n": 3}', "n"),
    (b'{"prompt": [1, 2, 99999999], "max_tokens": 2}', "prompt"),
])
def test_malformed_completion_requests_get_400_naming_the_field(worker, body, param):
    r = httpx.post(f"{worker.url}/v1/completions", content=body,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"


def test_prompt_given_as_token_ids_is_served(worker):
    r = httpx.post(f"{worker.url}/v1/completions",
                   json={"prompt": [504, 3575, 282, 4649, 314], "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 5


def test_malformed_chat_message_gets_400_naming_its_path(worker):
    r = httpx.post(f"{worker.url}/v1/chat/completions",
                   json={"messages": [{"role": "wizard", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.role"


def test_prompt_longer_than_the_context_gets_400(worker):
    r = httpx.post(f"{worker.url}/v1/completions", json={"prompt": "word " * 400, "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert "context holds 256" in r.json()["error"]["message"]


def test_max_tokens_beyond_the_context_gets_400(worker):
    r = httpx.post(f"{worker.url}/v1/completions", json={"prompt": "hello", "max_tokens": 1000})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_client_disconnect_cancels_the_sequence_and_frees_its_kv(worker):
    engine = worker.runtime.engine_loop.engine
    with httpx.stream("POST", f"{worker.url}/v1/completions",
                      json={"prompt": "Tell me a long story.", "max_tokens": 200,
                            "temperature": 0, "ignore_eos": True, "stream": True}) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in got)
        assert worker.runtime.engine_loop.in_flight == 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (worker.runtime.engine_loop.in_flight
                                           or engine.has_work() or engine.stats().kv_usage):
        time.sleep(0.05)
    assert worker.runtime.engine_loop.in_flight == 0
    assert engine.stats().running == 0 and engine.stats().kv_usage == 0.0


def test_health_readiness_and_metrics_are_served(worker):
    client(worker).completions.create(model="m", prompt="Hi", max_tokens=2, temperature=0)
    assert httpx.get(f"{worker.url}/healthz").status_code == 200
    assert httpx.get(f"{worker.url}/readyz").json() == {"ready": True}
    text = httpx.get(f"{worker.url}/metrics").text
    for name in ("dynasparse_time_to_first_token_seconds_count", "dynasparse_inter_token_seconds",
                 "dynasparse_request_seconds", "dynasparse_budget ", "dynasparse_queue_depth",
                 "dynasparse_kv_usage_ratio", "dynasparse_gpu_memory_used_bytes",
                 'dynasparse_requests_total{endpoint="completions",status="200"}',
                 "dynasparse_generation_tokens_total"):
        assert name in text, name


def test_api_key_is_required_when_configured(tight_worker):
    with pytest.raises(openai.AuthenticationError):
        client(tight_worker, api_key="wrong").models.list()
    assert [m.id for m in client(tight_worker, api_key="sekret").models.list()]
    assert httpx.get(f"{tight_worker.url}/healthz").status_code == 200  # probes need no key
