"""A load generator for one level of the serving benchmark: N concurrent streamed completions.

`run_level(url, streams, seconds, ...)` keeps `streams` OpenAI `/v1/completions` streams open for
`seconds` (each client sends its next request as soon as one ends), over several processes so the
client's own parsing never limits what it measures, and returns one `StreamRecord` per request.
`summarize(records, start, end)` turns them into served tok/s (tokens whose chunk arrived inside the
window), TTFT and inter-chunk percentiles, and errors. Called by `benchmarks.serve_bench`.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from dataclasses import asdict, dataclass, field


@dataclass
class StreamRecord:
    sent: float  # wall clock (time.time) when the request was sent
    first: float | None = None  # first content chunk
    chunks: list[float] = field(default_factory=list)  # arrival of each chunk with text
    tokens: int = 0  # completion tokens (the final usage), or chunks seen if cut at the end
    status: int = 0
    error: str = ""
    done: bool = False


async def _one(client, url: str, body: dict, stop_at: float) -> StreamRecord:
    rec = StreamRecord(sent=time.time())
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
            rec.status = r.status_code
            if r.status_code != 200:
                rec.error = (await r.aread()).decode(errors="replace")[:200]
                return rec
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    rec.done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    rec.error = str(chunk["error"].get("message", ""))[:200]
                    break
                now = time.time()
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    rec.chunks.append(now)
                    rec.first = rec.first or now
                if chunk.get("usage"):
                    rec.tokens = int(chunk["usage"]["completion_tokens"])
                if now > stop_at:
                    break
    except Exception as exc:  # noqa: BLE001 - a failed request is a measured error
        rec.error = f"{type(exc).__name__}: {exc}"[:200]
    if not rec.done and not rec.error:
        rec.tokens = len(rec.chunks)  # cut at the end of the level: count what arrived
    return rec


async def _clients(url: str, streams: int, seconds: float, body: dict) -> list[StreamRecord]:
    import httpx

    stop_at = time.time() + seconds
    records: list[StreamRecord] = []
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=limits) as client:
        async def loop() -> None:
            while time.time() < stop_at:
                records.append(await _one(client, url, body, stop_at))

        await asyncio.gather(*(loop() for _ in range(streams)))
    return records


def _process(args: tuple) -> list[dict]:
    url, streams, seconds, body = args
    return [asdict(r) for r in asyncio.run(_clients(url, streams, seconds, body))]


def run_level(url: str, streams: int, seconds: float, prompt_ids: list[int], max_tokens: int,
              processes: int = 0) -> list[StreamRecord]:
    """`streams` concurrent greedy streams (ignore_eos) for `seconds`, split over processes."""
    body = {"prompt": prompt_ids, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True}
    procs = processes or max(1, min(8, (streams + 15) // 16))
    shares = [streams // procs + (1 if i < streams % procs else 0) for i in range(procs)]
    jobs = [(url, n, seconds, body) for n in shares if n]
    if len(jobs) == 1:
        return [StreamRecord(**r) for r in _process(jobs[0])]
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        parts = pool.map(_process, jobs)
    return [StreamRecord(**r) for part in parts for r in part]


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def summarize(records: list[StreamRecord], start: float, end: float) -> dict:
    """Served tok/s inside [start, end], TTFT / inter-chunk p50 and p95 in ms, errors."""
    tokens = 0.0
    ttft, gaps = [], []
    chunks_total = tokens_total = 0
    for rec in records:
        if rec.error or rec.status != 200:
            continue
        if rec.chunks:
            per_chunk = rec.tokens / len(rec.chunks) if rec.tokens else 1.0
            tokens += per_chunk * sum(1 for t in rec.chunks if start <= t <= end)
            chunks_total += len(rec.chunks)
            tokens_total += rec.tokens
        if rec.first is not None and start <= rec.sent <= end:
            ttft.append(1000 * (rec.first - rec.sent))
        gaps += [1000 * (b - a) for a, b in zip(rec.chunks, rec.chunks[1:]) if start <= b <= end]
    errors = [r for r in records if r.error or r.status != 200]
    return dict(
        served_tokens_per_s=tokens / max(end - start, 1e-9),
        ttft_p50_ms=_percentile(ttft, 0.5), ttft_p95_ms=_percentile(ttft, 0.95),
        inter_token_p50_ms=_percentile(gaps, 0.5), inter_token_p95_ms=_percentile(gaps, 0.95),
        requests=len(records), errors=len(errors),
        error_examples=sorted({f"{r.status} {r.error}" for r in errors})[:3],
        tokens_per_chunk=tokens_total / chunks_total if chunks_total else None,
    )
