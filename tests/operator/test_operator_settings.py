"""Operator settings from DYNASPARSE_CONFIG and env vars; typed spec parsing and its checks."""

from __future__ import annotations

import pytest
import yaml

from dynasparse_operator.control_law import quality_floor
from dynasparse_proto.quality import budget_for_loss
from dynasparse_operator.errors import UserError
from dynasparse_operator.law_types import LawParams, PodReport
from dynasparse_operator.settings import load_settings
from dynasparse_operator.spec import parse_spec


def test_defaults_hold_the_brief_signal_keys():
    s = load_settings({})
    assert "aws-node-termination-handler/spot-itn" in s.signals.disruption_taints
    assert "ToBeDeletedByClusterAutoscaler" in s.signals.disruption_taints
    assert s.signals.pressure_conditions == ["MemoryPressure", "DiskPressure", "PIDPressure"]
    assert s.worker.control_port == 50051 and s.control.interval_s == 2.0


def test_chart_values_config_section_loads_and_env_wins(tmp_path):
    chart = yaml.safe_load(open("charts/dynasparse/values.yaml"))["config"]
    chart["signals"]["disruptionTaints"] = ["example.com/notice"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(chart))
    s = load_settings({"DYNASPARSE_CONFIG": str(path), "DYNASPARSE_CONTROL_PORT": "7000",
                       "DYNASPARSE_POD_NAME": "op-0", "DYNASPARSE_POD_NAMESPACE": "dynasparse"})
    assert s.signals.disruption_taints == ["example.com/notice"]
    assert s.control.report_interval_s == chart["control"]["reportIntervalSeconds"]
    assert s.worker.control_port == 7000 and s.server.pod_name == "op-0"
    assert s.server.namespace == "dynasparse"


def test_unknown_setting_is_a_user_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("control:\n  intervalSecs: 2\n")
    with pytest.raises(UserError, match="control.intervalSecs"):
        load_settings({"DYNASPARSE_CONFIG": str(path)})
    with pytest.raises(UserError, match="DYNASPARSE_CONTROL_PORT"):
        load_settings({"DYNASPARSE_CONTROL_PORT": "fifty"})


def test_spec_defaults_and_exactly_one_quality_floor():
    spec = parse_spec({"model": "default", "slo": {"ttftP95Ms": 500}, "quality": {"minBudget": 0.5}})
    assert spec.replicas == 1 and spec.control.interval_s == 2.0 and spec.worker.gpus == 1
    with pytest.raises(UserError, match="exactly one"):
        parse_spec({"model": "m", "slo": {"ttftP95Ms": 500}, "quality": {"minBudget": 0.5, "maxLoss": 1}})
    with pytest.raises(UserError, match="slo"):
        parse_spec({"model": "m", "slo": {}, "quality": {"maxLoss": 0.1}})


def test_max_loss_maps_through_the_reported_quality_curve_to_a_measured_point():
    curve = ((0.4, 0.65), (0.5, 0.29), (0.6, 0.1), (0.75, 0.03), (1.0, 0.0))
    assert budget_for_loss(curve, 0.1) == pytest.approx(0.6)
    assert budget_for_loss(curve, 0.2) == pytest.approx(0.6)  # 0.5..0.6 is not measured
    assert budget_for_loss(curve, 1.0) == 0.4
    bumpy = ((0.3, 0.05), (0.5, 0.2), (1.0, 0.0))  # not monotone: 0.3 alone would meet 0.1
    assert budget_for_loss(bumpy, 0.1) == 1.0
    assert budget_for_loss(curve, 0.0) == 1.0
    params = LawParams(ttft_slo_ms=500, max_loss=0.1)
    floor, why = quality_floor(params, [PodReport("a", 0.0, quality_curve=curve, min_budget=0.3)])
    assert floor == pytest.approx(0.6) and "maxLoss" in why
    floor, why = quality_floor(params, [PodReport("a", 0.0)])
    assert floor == 1.0 and "no quality curve" in why


def test_the_examples_parse_as_specs():
    import pathlib

    for path in sorted(pathlib.Path("operator/examples").glob("*/adaptivemodel.yaml")):
        body = yaml.safe_load(path.read_text())
        assert body["kind"] == "AdaptiveModel"
        parse_spec(body["spec"])
