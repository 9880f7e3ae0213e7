"""Monotonic epochs: a restarted operator whose wall clock went back, or that lost a status write,
still reaches its workers, over real mTLS gRPC with the production worker control server."""

from __future__ import annotations

import asyncio
import time

import pytest

from dynasparse_operator import epochs, pki
from dynasparse_proto.contract import Command
from test_operator_control_stream import make_loop, start_worker, wait_for

HOUR_MS = 3_600_000


def now_ms() -> int:
    return int(time.time() * 1000)


def test_the_starting_epoch_is_above_the_persisted_one_whatever_the_wall_clock_says():
    assert epochs.starting_epoch({"epoch": 5_000}, wall_clock_ms=1_000) == 5_001
    assert epochs.starting_epoch({"epoch": 5_000}, wall_clock_ms=9_000) == 9_000
    assert epochs.starting_epoch(None, wall_clock_ms=9_000) == 9_000
    assert epochs.starting_epoch({"epoch": "garbage"}, wall_clock_ms=9_000) == 9_000


def test_an_epoch_a_worker_applied_is_overtaken_unless_no_worker_would_accept_it():
    now = now_ms()
    assert epochs.overtaken(now, now + HOUR_MS, now) == now + HOUR_MS + 1
    assert epochs.overtaken(now, now, now) is None
    assert epochs.overtaken(now, 2**64 - 1, now) is None


async def run_loop(loop, sup, expect):
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop.is_set))
    try:
        loop.runtime.wake.set()
        await wait_for(lambda: sup.control.epoch == expect(), timeout=5.0)
    finally:
        stop.set()
        loop.runtime.wake.set()
        await asyncio.wait_for(task, 5)


async def test_a_restart_with_the_clock_an_hour_back_still_reaches_the_worker(tmp_path):
    ca = pki.make_ca()
    sup, server, port = await start_worker(tmp_path, ca)
    try:
        earlier = now_ms() + HOUR_MS  # the previous process ran with a clock an hour ahead
        assert sup.apply_update(Command(earlier, 7, target_budget=0.8))
        statuses = []
        loop = make_loop(port, ca, statuses, [])
        loop.body["status"]["epoch"] = earlier
        loop.epoch = epochs.starting_epoch(loop.body["status"], loop.deps.epoch)
        await run_loop(loop, sup, lambda: loop.epoch)
        assert sup.control.epoch == earlier + 1 and sup.budget == pytest.approx(0.9)
        assert statuses[0] == {"epoch": earlier + 1}, "persisted before the first command"
    finally:
        await server.stop(None)


async def test_a_worker_ahead_of_the_persisted_epoch_is_overtaken_from_its_reports(tmp_path):
    ca = pki.make_ca()
    sup, server, port = await start_worker(tmp_path, ca)
    try:
        ahead = now_ms() + 2 * HOUR_MS  # applied, but the status write recording it was lost
        assert sup.apply_update(Command(ahead, 3, target_budget=0.8))
        statuses = []
        loop = make_loop(port, ca, statuses, [])
        await run_loop(loop, sup, lambda: ahead + 1)
        assert sup.budget == pytest.approx(0.9)
        assert {"epoch": ahead + 1} in statuses
    finally:
        await server.stop(None)


async def test_a_refused_control_message_becomes_a_warning_event(tmp_path):
    ca = pki.make_ca()
    sup, server, port = await start_worker(tmp_path, ca)
    try:
        assert not sup.apply_update(Command(2**64 - 1, 1, target_budget=0.5, sender="rogue"))
        events = []
        loop = make_loop(port, ca, [], events)
        refused_seen = lambda: any(e[1] == "ControlMessageRefused" for e in events)  # noqa: E731
        await run_loop(loop, sup, lambda: loop.epoch if refused_seen() else -1)
        refused = [e for e in events if e[1] == "ControlMessageRefused"]
        assert len(refused) == 1 and refused[0][0] == "Warning" and "epoch" in refused[0][2]
    finally:
        await server.stop(None)


async def test_a_max_budget_below_the_quality_floor_is_a_warning_event_once(tmp_path):
    ca = pki.make_ca()
    sup, server, port = await start_worker(tmp_path, ca)
    try:
        events = []
        loop = make_loop(port, ca, [], events)
        loop.body["spec"] = {**loop.body["spec"], "control": {"intervalSeconds": 5, "maxBudget": 0.3}}
        await run_loop(loop, sup, lambda: loop.epoch)
        await loop.step()  # the same problem again: no second event
        await loop.pool.close()
        invalid = [e for e in events if e[1] == "InvalidQualityBounds"]
        assert len(invalid) == 1 and "maxBudget 0.30 is below the quality floor 0.40" in invalid[0][2]
        assert sup.budget == pytest.approx(0.4), "quality wins over speed"
    finally:
        await server.stop(None)
