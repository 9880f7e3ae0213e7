"""Control messages no honest operator sends, over real mTLS gRPC on loopback: the worker refuses or
clamps them and stays reachable by its real operator.

The worker side is the production control server (Supervisor + build_control_server) with a small
in-test actuator instead of a model, so these run in well under a second each.
"""

from __future__ import annotations

import asyncio
import math
import random
import time

import grpc
import pytest

from dynasparse_proto import control_pb2, control_pb2_grpc
from dynasparse_proto import limits
from dynasparse_proto.contract import Command
from dynasparse_worker.control.bounds import apply_update, initial_state, rejection
from dynasparse_worker.control.pki import make_dev_bundle, write_bundle
from dynasparse_worker.control.service import TlsFiles, build_control_server
from dynasparse_worker.control.supervisor import Supervisor

U64_MAX = 2**64 - 1


class Actuator:
    def __init__(self) -> None:
        self.budget = 1.0

    def set_budget(self, budget: float) -> float:
        self.budget = budget
        return 1.0 - budget

    def min_budget(self) -> float:
        return 0.3

    def quality_curve(self) -> list[tuple[float, float]]:
        return [(0.3, 0.4), (1.0, 0.0)]


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
async def worker(tmp_path):
    bundle = make_dev_bundle()
    write_bundle(bundle, tmp_path)
    sup = Supervisor(Actuator(), pod_name="w0", model_name="m", report_interval_s=0.2)
    sup.model_loaded = True
    server, port, _ = build_control_server(sup, TlsFiles.from_dir(tmp_path), "127.0.0.1", 0)
    await server.start()
    creds = grpc.ssl_channel_credentials(bundle["ca.crt"], bundle["client.key"],
                                         bundle["client.crt"])
    channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", creds,
                                      options=[("grpc.ssl_target_name_override", "localhost")])
    try:
        yield sup, control_pb2_grpc.ControlStub(channel)
    finally:
        await channel.close()
        await server.stop(None)


class Session:
    """An operator-side Session on an aio stub: `send` messages, read reports with `until`."""

    def __init__(self, stub: control_pb2_grpc.ControlStub) -> None:
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.call = stub.Session(self._messages())

    async def _messages(self):
        while True:
            yield await self.outbox.get()

    def send(self, **fields) -> None:
        self.outbox.put_nowait(control_pb2.ControlMessage(**fields))

    async def until(self, predicate, timeout: float = 5.0) -> control_pb2.Report:
        async def read():
            async for report in self.call:
                if predicate(report):
                    return report
            raise AssertionError("stream ended")
        return await asyncio.wait_for(read(), timeout)

    async def count_reports(self, seconds: float) -> int:
        count = 0
        deadline = time.monotonic() + seconds
        try:
            async with asyncio.timeout(seconds):
                async for _ in self.call:
                    count += 1
        except TimeoutError:
            pass
        assert time.monotonic() >= deadline - 0.05
        return count


async def test_an_epoch_of_2_to_the_64_and_a_nanosecond_interval_do_not_lock_the_operator_out(worker):
    sup, stub = worker
    session = Session(stub)
    try:
        session.send(epoch=U64_MAX, sequence=1, target_budget=0.5, report_interval_s=1e-9,
                     sender="rogue")
        warned = await session.until(lambda r: len(r.warnings) > 0)
        assert "epoch" in warned.warnings[0] and "ahead" in warned.warnings[0]
        assert sup.control.epoch == 0 and sup.budget == 1.0, "the rogue update changed nothing"

        epoch = now_ms()
        session.send(epoch=epoch, sequence=1, mode=control_pb2.MODE_DRAIN, target_budget=0.8,
                     report_interval_s=1e-9, sender="operator", reason="node going away")
        drained = await session.until(lambda r: r.applied_epoch == epoch)
        assert drained.mode == control_pb2.MODE_DRAIN and drained.applied_sequence == 1
        assert sup.budget == pytest.approx(0.3), "drain runs at the floor"
        assert sup.report_interval_s == limits.REPORT_INTERVAL_RANGE_S[0]
        reports = await session.count_reports(1.0)
        print(f"reports in the second after a 1e-9 s interval was asked for: {reports}")
        assert reports <= 12, f"{reports} reports in one second"
    finally:
        session.call.cancel()


async def test_a_sequence_near_2_to_the_64_is_refused_and_the_next_epoch_still_applies(worker):
    sup, stub = worker
    session = Session(stub)
    try:
        epoch = now_ms()
        session.send(epoch=epoch, sequence=U64_MAX, target_budget=0.5)
        await session.until(lambda r: any("sequence" in w for w in r.warnings))
        session.send(epoch=epoch, sequence=1, target_budget=0.6)
        report = await session.until(lambda r: r.applied_epoch == epoch)
        assert report.applied_budget == pytest.approx(0.6)
    finally:
        session.call.cancel()


@pytest.mark.parametrize("value, expected", [
    (1e-9, 0.1), (0.0, 0.0), (-5.0, 0.0), (math.nan, 0.0), (math.inf, 0.0), (1e9, 60.0), (0.5, 0.5),
])
def test_report_interval_is_clamped_into_its_range_and_non_finite_counts_as_unset(value, expected):
    state, applied = apply_update(initial_state(0.3), Command(1, 1, report_interval_s=value),
                                  0.3, now_ms())
    assert applied and state.report_interval_s == expected


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1.0])
def test_non_finite_or_negative_budgets_leave_the_bounds_as_they_were(bad):
    state, _ = apply_update(initial_state(0.3), Command(1, 1, target_budget=0.7, floor=0.5,
                                                               ceiling=0.8), 0.3)
    state, applied = apply_update(state, Command(1, 2, target_budget=bad, floor=bad,
                                                        ceiling=bad, drain_grace_s=bad,
                                                        ttft_p95_ms=bad), 0.3, now_ms())
    assert applied
    assert (state.target, state.floor, state.ceiling) == (0.7, 0.5, 0.8)
    assert state.drain_grace_s == 0.0 and state.ttft_p95_ms == 0.0


def test_an_epoch_within_a_day_of_the_workers_clock_is_accepted():
    now = now_ms()
    for epoch in (1, now - 10**9, now + 3_600_000):
        assert rejection(Command(epoch, 1), now) == ""
    assert rejection(Command(now + 2 * 86_400_000, 1), now) != ""


def random_message(rng: random.Random, now: int) -> control_pb2.ControlMessage:
    """A ControlMessage with every field drawn from values that break naive code."""
    ints = [0, 1, now, now + 2 * 86_400_000, 2**53, 2**63, U64_MAX, rng.randrange(U64_MAX)]
    floats = [math.nan, math.inf, -math.inf, 0.0, -1.0, 1e-300, 1e300, 5e-324, rng.uniform(-2, 2)]
    return control_pb2.ControlMessage(
        epoch=rng.choice(ints), sequence=rng.choice(ints), target_budget=rng.choice(floats),
        floor=rng.choice(floats), ceiling=rng.choice(floats), mode=rng.choice([0, 1, 2, 7, 2**20]),
        slo=control_pb2.SloTargets(ttft_p95_ms=rng.choice(floats)),
        reason=rng.choice(["", "x" * 100_000, "\udc80".encode("utf-8", "surrogatepass")
                           .decode("utf-8", "replace"), "ok"]),
        sender=rng.choice(["", "op", "\x00" * 10]), report_interval_s=rng.choice(floats),
        drain_grace_s=rng.choice(floats), sent_at_unix_ms=rng.choice([0, -1, 2**62]))


async def test_a_thousand_malformed_messages_leave_the_worker_bounded_and_steerable(worker):
    sup, stub = worker
    rng = random.Random(14)
    session = Session(stub)
    try:
        for _ in range(1000):
            session.outbox.put_nowait(random_message(rng, now_ms()))
        await session.until(lambda r: session.outbox.empty(), timeout=30.0)
        control = sup.control
        assert 0.3 <= control.floor <= control.target <= control.ceiling <= 1.0
        assert math.isfinite(sup.budget) and 0.3 <= sup.budget <= 1.0
        low, high = limits.REPORT_INTERVAL_RANGE_S
        assert control.report_interval_s == 0.0 or low <= control.report_interval_s <= high
        assert math.isfinite(control.drain_grace_s) and math.isfinite(control.ttft_p95_ms)
        assert control.epoch <= now_ms() + limits.MAX_EPOCH_AHEAD_MS
        epoch = max(control.epoch + 1, now_ms())
        session.send(epoch=epoch, sequence=1, target_budget=0.5, floor=0.4, ceiling=0.9)
        report = await session.until(lambda r: r.applied_epoch == epoch, timeout=10.0)
        if sup.control.mode.value == "normal":
            assert report.applied_budget == pytest.approx(0.5)
        else:  # one of the random messages drained it: drain is one-way, at the floor
            assert report.applied_budget == pytest.approx(sup.control.floor)
    finally:
        session.call.cancel()


async def test_a_megabyte_reason_is_clipped_before_it_is_echoed_in_every_report(worker):
    sup, stub = worker
    session = Session(stub)
    try:
        epoch = now_ms()
        session.send(epoch=epoch, sequence=1, target_budget=0.6, reason="r" * 1_000_000,
                     sender="s" * 100_000)
        report = await session.until(lambda r: r.applied_epoch == epoch)
        assert len(report.last_decision.reason) <= 2 * limits.MAX_TEXT + 16  # reason (from sender)
        assert report.ByteSize() < 10_000
    finally:
        session.call.cancel()
