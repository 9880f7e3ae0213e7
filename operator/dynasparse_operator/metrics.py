"""Prometheus metrics of the operator: budgets, decisions by reason, SLO attainment.

`OperatorMetrics` owns its own CollectorRegistry (no module globals); commands/run.py creates one,
serves it with `start(port)`, and hands it to every daemon through kopf's memo. Daemons call
`observe(namespace, model, decision)` after each control decision.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from dynasparse_operator.law_types import Decision
from dynasparse_proto.contract import Mode


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["namespace", "model"]
        self.budget = Gauge("dynasparse_operator_budget", "Budget sent to the model's pods in normal mode",
                            labels, registry=self.registry)
        self.floor = Gauge("dynasparse_operator_budget_floor", "Quality floor of the budget",
                           labels, registry=self.registry)
        self.pod_budget = Gauge("dynasparse_operator_pod_target_budget", "Budget sent to one pod",
                                labels + ["pod", "mode"], registry=self.registry)
        self.decisions = Counter("dynasparse_operator_decisions_total",
                                 "Control decisions by kind (slo-violation, tighten, relax, hold, "
                                 "disruption, no-data) and whether the budget changed",
                                 labels + ["kind", "changed"], registry=self.registry)
        self.slo_checks = Counter("dynasparse_operator_slo_checks_total",
                                  "Decisions that saw the worst pod within (met=true) or over the SLO",
                                  labels + ["met"], registry=self.registry)
        self.worst_ratio = Gauge("dynasparse_operator_worst_p95_slo_ratio",
                                 "Worst pod's p95 divided by its SLO (1 = at the SLO)",
                                 labels, registry=self.registry)
        self.streams = Gauge("dynasparse_operator_control_streams", "Open control streams",
                             labels, registry=self.registry)

    def start(self, port: int, addr: str = "0.0.0.0") -> None:
        if port:
            start_http_server(port, addr=addr, registry=self.registry)

    def observe(self, namespace: str, model: str, decision: Decision, open_streams: int) -> None:
        self.budget.labels(namespace, model).set(decision.to_budget)
        self.floor.labels(namespace, model).set(decision.floor)
        for cmd in decision.commands.values():
            self.pod_budget.labels(namespace, model, cmd.name, cmd.mode.value).set(cmd.target_budget)
        self.decisions.labels(namespace, model, decision.kind, str(decision.changed).lower()).inc()
        if decision.worst_ratio is not None:
            self.worst_ratio.labels(namespace, model).set(decision.worst_ratio)
            self.slo_checks.labels(namespace, model, str(decision.worst_ratio <= 1.0).lower()).inc()
        self.streams.labels(namespace, model).set(open_streams)

    def forget_pod(self, namespace: str, model: str, pod: str) -> None:
        for mode in Mode:
            try:
                self.pod_budget.remove(namespace, model, pod, mode.value)
            except KeyError:
                pass
