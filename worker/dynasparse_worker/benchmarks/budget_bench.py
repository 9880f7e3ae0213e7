"""Measurements of the gated engine per budget, for `dynasparse bench --budgets`.

Per batch size and budget: decode tok/s of the gated engine, its speed-up over our own dense engine
(the same engine built without a state), the gate overhead at budget 1.0, and the cost of a budget
change: the `set_budget` call, the first decode step after it (which must already use the new
plan), graph captures and `torch.cuda.memory_allocated` before and after (both must not move).
The decode timing loop is passed in (`engine_bench.bench_engine`, shared by every benchmark).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from dynasparse_worker.benchmarks.engine_bench import graph_replay_ms, sync_device
from dynasparse_worker.engine.types import SamplingParams

# bench_decode(engine, batch, prompt_len, gen_len, vocab) -> (tok/s, ms per step)
DecodeTimer = Callable[[Any, int, int, int, int], tuple[float, float]]


def plan_summary(engine: Any, batch: int) -> dict:
    """What the active plan does at this batch size: halves skipped, width sparsity, KV cap."""
    runner = engine.runner
    plan = runner.current_plan()
    if plan is None:
        return {}
    nb = runner.plan_bucket(batch)
    gated, depth = plan.variants[nb]
    skipped = 0 if depth is None else sum((not a) + (not m) for a, m in depth)
    summary = dict(width_gates=gated, halves_skipped=skipped,
                   width_sparsity_target=round(plan.width_sparsity[nb], 4), kv_cap=plan.kv_cap[nb])
    summary.update(level_speed(engine, batch, float(runner.state.budget)))
    return summary


def level_speed(engine: Any, batch: int, budget: float) -> dict:
    """What the start-up speed table measured for this budget's level at this batch size:
    whether it is offered, its graph-replay speed-up, and why not (empty without a table)."""
    speed = getattr(engine, "speed", None)
    runner = engine.runner
    if speed is None or not runner.buckets:
        return {}
    bucket = runner.graph_bucket(min(batch, runner.buckets[-1]))
    for level in speed.levels.get(bucket, []):
        if abs(level.budget - budget) < 1e-6:
            return dict(level_offered=level.offered, level_measured_ms=level.ms,
                        level_measured_speedup=speed.dense_ms[bucket] / level.ms,
                        level_kernels="/".join(level.key[1]) or "dense", level_note=level.note)
    return {}


def budget_rows(engine: Any, dense_rates: dict[int, float], batch_sizes: list[int],
                budgets: list[float], prompt_len: int, gen_len: int, timer: DecodeTimer,
                repeats: int = 1) -> list[dict]:
    """One row per (batch, budget) for the gated engine, with speed-up over the dense engine."""
    vocab = engine.runner.model.shape.vocab
    rows = []
    for batch in batch_sizes:
        if batch > engine.runner.cache.num_slots or batch not in dense_rates:
            continue
        runs: dict[float, list[tuple[float, float]]] = {b: [] for b in budgets}
        for _ in range(max(1, repeats)):  # interleaved: load changes hit every budget alike
            for budget in budgets:
                engine.apply_budget(budget)
                runs[budget].append(timer(engine, batch, prompt_len, gen_len, vocab))
        for budget in budgets:
            engine.apply_budget(budget)
            tps = statistics.median(r[0] for r in runs[budget])
            ms = statistics.median(r[1] for r in runs[budget])
            row = dict(engine="dynasparse-gated", batch_size=batch, budget=budget,
                       tokens_per_s=tps, ms_per_token=ms, gen_len=gen_len,
                       graph_ms=graph_replay_ms(engine, batch), speedup=tps / dense_rates[batch],
                       expected_loss=engine.gated.expected_loss(budget, batch),
                       speedup_over_gated_dense=tps / statistics.median(
                           r[0] for r in runs[max(budgets)]))
            row.update(plan_summary(engine, batch))
            if budget >= 1.0:
                row["gate_overhead"] = dense_rates[batch] / tps - 1.0
            rows.append(row)
    engine.apply_budget(1.0)
    return rows


def _alloc_count(device: torch.device) -> int | None:
    """Device allocation requests so far (the caching allocator's counter; None on the CPU)."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.memory_stats(device).get("allocation.all.allocated", 0))


def switch_costs(engine: Any, batch: int, budgets: list[float], prompt_len: int = 2) -> list[dict]:
    """Budget changes while `batch` sequences decode: time to the first step on the new plan.

    For each budget (from the previous one): `set_budget_ms` (the call), `first_step_ms` (the
    call plus the next step, synced), `steady_step_ms` (a step without a change), whether that
    first step ran the new plan's variant, and the captures / allocated bytes around the change.
    """
    runner, device = engine.runner, engine.runner.device
    vocab = runner.model.shape.vocab
    batch = min(batch, runner.cache.num_slots)
    steps_needed = 3 * len(budgets) + 4  # prefill, warm-up, then a steady and a switching step each
    if prompt_len + steps_needed > runner.cache.max_seq_len:
        return []
    generator = torch.Generator().manual_seed(7)
    for i in range(batch):
        prompt = torch.randint(0, vocab, (prompt_len,), generator=generator).tolist()
        engine.add_request(f"switch{i}", prompt, SamplingParams(max_tokens=steps_needed, ignore_eos=True))
    while engine.scheduler.waiting or engine.scheduler.prefilling:
        engine.step()
    for budget in budgets:  # warm every plan once (CPU packing happens on first use)
        engine.apply_budget(budget)
        engine.step()
    rows = []
    for budget in budgets:
        sync_device(device)
        start = time.perf_counter()
        engine.step()
        sync_device(device)
        steady = time.perf_counter() - start
        captures = runner.captures
        allocated = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
        allocs = _alloc_count(device)
        sync_device(device)
        start = time.perf_counter()
        engine.apply_budget(budget)  # the path the server's actuator takes
        called = time.perf_counter() - start
        engine.step()
        sync_device(device)
        first = time.perf_counter() - start
        wanted = runner.plan.variants[runner.plan_bucket(runner.last_variant[0])]
        rows.append(dict(
            budget=budget, batch_size=batch, set_budget_ms=1000 * called, first_step_ms=1000 * first,
            steady_step_ms=1000 * steady, switch_overhead_ms=1000 * (first - steady),
            used_new_plan=runner.last_variant[1] in (wanted, (True, wanted[1])),
            captures_during=runner.captures - captures,
            allocated_bytes_during=(torch.cuda.memory_allocated(device) - allocated
                                    if allocated is not None else None),
            device_allocations_during=(_alloc_count(device) - allocs if allocs is not None else None),
        ))
    while engine.has_work():
        engine.step()
    engine.apply_budget(1.0)
    return rows
