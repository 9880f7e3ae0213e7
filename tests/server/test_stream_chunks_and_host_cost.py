"""The streamed chunk bytes and what the serving path costs the host per token."""

from __future__ import annotations

import json
import logging

import pytest

from dynasparse_worker.engine.types import TokenEvent
from dynasparse_worker.server.engine_loop import HostCpu, StepProfile
from dynasparse_worker.server.responses import Shape, SseChunks

TRICKY = ["plain", 'quotes " and \\ backslash', "wörld é 你好", "new\nline\ttab", "\x00text\x00", "🙂", " "]


def _chunks(chat: bool) -> list[dict]:
    sse = SseChunks(Shape(chat, 'm"odel', False), 3)
    pieces = [sse.opening()] + [sse.event(TokenEvent("r", [1], text, False, None, 3, 1))
                                for text in TRICKY]
    pieces.append(sse.event(TokenEvent("r", [1], "", True, "length", 3, len(TRICKY))))
    raw = [c + b"\n\n" for c in b"".join(pieces).split(b"\n\n") if c]
    assert raw[-1] == b"data: [DONE]\n\n"
    assert all(c.startswith(b"data: ") for c in raw)
    return [json.loads(c[6:]) for c in raw[:-1]]


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_every_token_chunk_is_valid_json_carrying_exactly_its_text(chat):
    chunks = _chunks(chat)
    middle = chunks[1:-1] if chat else chunks[:-1]  # chat opens with the role chunk
    key = (lambda c: c["choices"][0]["delta"]["content"]) if chat else (lambda c: c["choices"][0]["text"])
    assert [key(c) for c in middle] == TRICKY
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and all(c["model"] == 'm"odel' for c in chunks)
    assert all(c["choices"][0]["finish_reason"] is None for c in middle)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_the_step_profile_reports_each_stages_cpu_per_token(caplog):
    host = HostCpu()
    profile = StepProfile(host, every_s=0.0)
    busy = sum(i * i for i in range(200_000))  # engine-thread CPU to account for
    host.output_s += 0.002  # 2 ms of output-thread CPU over 100 tokens: 20 us per token
    host.event_loop_s += 0.005
    profile.events = 100
    engine, output, loop = profile.cpu_us_per_token()
    assert busy > 0 and engine > 0
    assert output == pytest.approx(20.0) and loop == pytest.approx(50.0)
    with caplog.at_level(logging.INFO, logger="dynasparse_worker.server.engine_loop"):
        profile.add(0.0001, 0.005, 100, now=profile.since + 1.0)
    assert "host CPU per token: engine" in caplog.text


def test_the_host_cost_benchmark_serves_a_pump_through_the_real_server(tmp_path):
    from dynasparse_worker.benchmarks.host_cost import main

    out = tmp_path / "host.json"
    assert main(["--streams", "4", "--seconds", "3", "--step-ms", "5", "--gen-len", "16",
                 "--client-processes", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["streams"] == 4 and row["errors"] == 0 and row["requests"] > 4
    assert 0 < row["served_tokens_per_s"] <= row["offered_tokens_per_s"] * 1.05
    assert row["output_cpu_us_per_token"] > 0 and row["event_loop_cpu_us_per_token"] > 0
    assert row["inter_token_p50_ms"] >= 5.0 * 0.9  # no token comes faster than the pump's step
