"""The shared control contract: one Mode, one command value, and conversions that survive the wire
both ways, so the operator and the worker cannot disagree on what a message says."""

from __future__ import annotations

import math

from hypothesis import given, settings, strategies as st

from dynasparse_proto import control_pb2
from dynasparse_proto.contract import (Command, LoadSignals, Mode, command_from_pb, command_to_pb,
                                       load_signals_from_pb, load_signals_to_pb, mode_from_pb,
                                       mode_to_pb, quality_curve_from_pb, quality_curve_to_pb,
                                       speed_curve_from_pb, speed_curve_to_pb)

u64 = st.integers(0, 2**64 - 1)
numbers = st.floats(allow_nan=False, allow_infinity=True, width=64)
text = st.text(max_size=40)


@settings(max_examples=200, deadline=None)
@given(epoch=u64, sequence=u64, target=numbers, floor=numbers, ceiling=numbers,
       mode=st.sampled_from(Mode), reason=text, sender=text, interval=numbers, grace=numbers,
       ttft=numbers, sent=st.integers(1, 2**62))
def test_a_command_reads_back_exactly_as_it_was_sent(epoch, sequence, target, floor, ceiling, mode,
                                                     reason, sender, interval, grace, ttft, sent):
    command = Command(epoch, sequence, target_budget=target, floor=floor, ceiling=ceiling,
                      mode=mode, reason=reason, sender=sender, report_interval_s=interval,
                      drain_grace_s=grace, ttft_p95_ms=ttft, sent_at_unix_ms=sent)
    wire = control_pb2.ControlMessage.FromString(command_to_pb(command).SerializeToString())
    assert command_from_pb(wire) == command


def test_a_command_without_a_send_time_is_stamped_now():
    message = command_to_pb(Command(1, 1))
    assert message.sent_at_unix_ms > 1_600_000_000_000


def test_the_ttft_slo_travels_in_slo_targets_for_the_workers_miss_count():
    message = command_to_pb(Command(1, 1, ttft_p95_ms=500.0))
    assert message.slo.ttft_p95_ms == 500.0
    assert "inter_token_p95_ms" not in control_pb2.SloTargets.DESCRIPTOR.fields_by_name


def test_every_mode_maps_to_its_wire_value_and_back():
    for mode in Mode:
        assert mode_from_pb(mode_to_pb(mode)) is mode
    assert mode_to_pb(Mode.DRAIN) == control_pb2.MODE_DRAIN


def test_an_unspecified_or_unknown_wire_mode_serves_normally_rather_than_draining():
    assert mode_from_pb(control_pb2.MODE_UNSPECIFIED) is Mode.NORMAL
    assert mode_from_pb(7) is Mode.NORMAL


def test_a_mode_prints_as_its_name_in_labels_and_messages():
    assert str(Mode.DRAIN) == "drain" and f"{Mode.NORMAL}" == "normal"
    assert Mode.DRAIN == "drain"


def test_curves_survive_the_wire_and_invalid_points_are_dropped_on_reading():
    quality = ((0.3, 0.4), (0.5, 0.2), (1.0, 0.0))
    speed = ((0.3, 2.0), (1.0, 1.0))
    report = control_pb2.Report()
    report.quality_curve.extend(quality_curve_to_pb(reversed(quality + ((math.nan, 0.1), (1.5, 0.0)))))
    report.load.speed_curve.extend(speed_curve_to_pb(speed + ((0.5, -1.0),)))
    report = control_pb2.Report.FromString(report.SerializeToString())
    assert quality_curve_from_pb(report.quality_curve) == quality
    assert speed_curve_from_pb(report.load.speed_curve) == speed


def test_load_signals_read_back_exactly_as_the_worker_measured_them():
    load = LoadSignals(arrival_rate_short=12.5, arrival_rate_long=10.25, oldest_waiting_s=0.75,
                       work_per_request_s=4.5, slots=32, samples_since_change=40,
                       late_since_change=3, speed_curve=((0.3, 2.0), (1.0, 1.0)))
    wire = control_pb2.LoadSignals.FromString(load_signals_to_pb(load).SerializeToString())
    assert load_signals_from_pb(wire) == load
