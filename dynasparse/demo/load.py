"""Open-loop load for the demo: a request-rate schedule, Poisson arrivals, streamed completions.

`rate_schedule` is pure (time -> requests/s); `run_load` sends requests at those times whatever the
server's state (open loop, so a slow server builds a queue as real traffic would) and records each
request's time to first token and inter-token gaps. Called by dynasparse.demo.run.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True)
class RampSchedule:
    """Base rate for the first fifth, a ramp to peak_factor × base, a hold, a ramp down, base again."""

    base_rps: float
    duration_s: float
    peak_factor: float = 3.0

    def rate_at(self, t: float) -> float:
        fifth = self.duration_s / 5
        peak = self.base_rps * self.peak_factor
        if t < fifth:
            return self.base_rps
        if t < 2 * fifth:
            return self.base_rps + (peak - self.base_rps) * (t - fifth) / fifth
        if t < 3 * fifth:
            return peak
        if t < 4 * fifth:
            return peak - (peak - self.base_rps) * (t - 3 * fifth) / fifth
        return self.base_rps

    @property
    def max_rate(self) -> float:
        return self.base_rps * max(1.0, self.peak_factor)


def poisson_arrivals(schedule: RampSchedule, seed: int = 0) -> list[float]:
    """Arrival times of a Poisson process with the schedule's varying rate (by thinning).

    The first request leaves at t = 0, so even a few-second run measures something."""
    rng = random.Random(seed)
    times, t = [0.0], 0.0
    while True:
        t += rng.expovariate(schedule.max_rate)
        if t >= schedule.duration_s:
            return times
        if rng.random() * schedule.max_rate <= schedule.rate_at(t):
            times.append(t)


@dataclass
class RequestRecord:
    """What one demo request saw, in seconds since the load started."""

    sent_at: float
    ttft_s: float | None = None
    inter_token_s: list[float] = field(default_factory=list)
    tokens: int = 0
    finished_at: float | None = None
    status: str = "pending"  # "ok" | "http-<code>" | "error:<kind>"


async def send_one(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int,
                   record: RequestRecord, clock: Callable[[], float]) -> None:
    """Streams one chat completion and fills `record` as chunks arrive.

    `ignore_eos` (a common OpenAI-API extension, honoured by dynasparse serve) makes every request
    generate exactly max_tokens, so the load is the same in both runs whatever the model says.
    """
    body = {"model": "default", "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "stream": True, "temperature": 0.0, "ignore_eos": True}
    last = None
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                await response.aread()
                record.status = f"http-{response.status_code}"
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                choices = chunk.get("choices") or []
                if not choices or not (choices[0].get("delta") or {}).get("content"):
                    continue
                now = clock()
                if record.ttft_s is None:
                    record.ttft_s = now - record.sent_at
                else:
                    record.inter_token_s.append(now - last)
                last = now
                record.tokens += 1
        record.status = "ok"
    except httpx.HTTPError as exc:
        record.status = f"error:{type(exc).__name__}"
    finally:
        record.finished_at = clock()


async def run_load(base_url: str, schedule: RampSchedule, prompts: list[str], max_tokens: int,
                   on_tick: Callable[[float, list[RequestRecord]], None] | None = None,
                   seed: int = 0) -> list[RequestRecord]:
    """Sends the schedule's requests open-loop; calls on_tick about twice a second for live views."""
    arrivals = poisson_arrivals(schedule, seed)
    records: list[RequestRecord] = []
    start = time.monotonic()
    clock = lambda: time.monotonic() - start  # noqa: E731 - a clock relative to the load's start
    url = base_url.rstrip("/") + "/v1/chat/completions"
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as client:
        tasks = []

        async def ticker():
            while True:
                if on_tick:
                    on_tick(clock(), records)
                await asyncio.sleep(0.5)

        tick_task = asyncio.create_task(ticker())
        for i, at in enumerate(arrivals):
            delay = at - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            record = RequestRecord(sent_at=clock())
            records.append(record)
            tasks.append(asyncio.create_task(
                send_one(client, url, prompts[i % len(prompts)], max_tokens, record, clock)))
        remaining = schedule.duration_s - clock()
        if remaining > 0:
            await asyncio.sleep(remaining)
        await asyncio.gather(*tasks)
        tick_task.cancel()
        if on_tick:
            on_tick(clock(), records)
    return records
