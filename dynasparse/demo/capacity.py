"""Sizes the demo to the machine: how fast is the worker at a dense budget, unloaded and saturated?

Called by demo/run.py before the two runs, so that the SLO and the load ramp mean the same thing on
2 CPU cores and on a GPU: the SLO is a multiple of the unloaded time to first token, and the base
load a fraction of the dense throughput, so that the 3x peak overloads a dense worker.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from dynasparse.demo.load import RequestRecord, send_one
from dynasparse.demo.summary import percentile


@dataclass(frozen=True)
class Capacity:
    unloaded_ttft_ms: float
    unloaded_inter_token_ms: float
    dense_requests_per_s: float


async def measure_capacity(base_url: str, prompts: list[str], max_tokens: int,
                           seconds: float, concurrency: int) -> Capacity:
    """A few requests one at a time, then `concurrency` closed-loop clients for `seconds`."""
    url = base_url.rstrip("/") + "/v1/chat/completions"
    start = time.monotonic()
    clock = lambda: time.monotonic() - start  # noqa: E731
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0)) as client:
        alone = []
        for prompt in prompts[:3]:
            record = RequestRecord(sent_at=clock())
            await send_one(client, url, prompt, max_tokens, record, clock)
            alone.append(record)
        done: list[RequestRecord] = []
        t_end = clock() + seconds

        async def closed_loop(i: int) -> None:
            k = i
            while clock() < t_end:
                record = RequestRecord(sent_at=clock())
                await send_one(client, url, prompts[k % len(prompts)], max_tokens, record, clock)
                done.append(record)
                k += concurrency

        t0 = clock()
        await asyncio.gather(*(closed_loop(i) for i in range(concurrency)))
        elapsed = clock() - t0
    ok = [r for r in alone if r.status == "ok" and r.ttft_s is not None]
    if not ok:
        raise RuntimeError("the worker answered none of the capacity probes")
    gaps = [g for r in ok for g in r.inter_token_s]
    return Capacity(
        unloaded_ttft_ms=percentile([r.ttft_s * 1000 for r in ok], 50),
        unloaded_inter_token_ms=percentile([g * 1000 for g in gaps], 50) if gaps else 0.0,
        dense_requests_per_s=sum(1 for r in done if r.status == "ok") / max(elapsed, 1e-9),
    )
