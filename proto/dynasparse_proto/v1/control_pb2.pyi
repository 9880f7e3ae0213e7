from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_NORMAL: _ClassVar[Mode]
    MODE_DRAIN: _ClassVar[Mode]
MODE_UNSPECIFIED: Mode
MODE_NORMAL: Mode
MODE_DRAIN: Mode

class SloTargets(_message.Message):
    __slots__ = ("ttft_p95_ms",)
    TTFT_P95_MS_FIELD_NUMBER: _ClassVar[int]
    ttft_p95_ms: float
    def __init__(self, ttft_p95_ms: _Optional[float] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("epoch", "sequence", "target_budget", "floor", "ceiling", "mode", "slo", "reason", "sender", "report_interval_s", "drain_grace_s", "sent_at_unix_ms")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_BUDGET_FIELD_NUMBER: _ClassVar[int]
    FLOOR_FIELD_NUMBER: _ClassVar[int]
    CEILING_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SLO_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    REPORT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    DRAIN_GRACE_S_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    sequence: int
    target_budget: float
    floor: float
    ceiling: float
    mode: Mode
    slo: SloTargets
    reason: str
    sender: str
    report_interval_s: float
    drain_grace_s: float
    sent_at_unix_ms: int
    def __init__(self, epoch: _Optional[int] = ..., sequence: _Optional[int] = ..., target_budget: _Optional[float] = ..., floor: _Optional[float] = ..., ceiling: _Optional[float] = ..., mode: _Optional[_Union[Mode, str]] = ..., slo: _Optional[_Union[SloTargets, _Mapping]] = ..., reason: _Optional[str] = ..., sender: _Optional[str] = ..., report_interval_s: _Optional[float] = ..., drain_grace_s: _Optional[float] = ..., sent_at_unix_ms: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LatencySummary(_message.Message):
    __slots__ = ("p50_ms", "p95_ms", "count")
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    p50_ms: float
    p95_ms: float
    count: int
    def __init__(self, p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class LocalDecision(_message.Message):
    __slots__ = ("at_unix_ms", "from_budget", "to_budget", "reason", "source")
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    FROM_BUDGET_FIELD_NUMBER: _ClassVar[int]
    TO_BUDGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    at_unix_ms: int
    from_budget: float
    to_budget: float
    reason: str
    source: str
    def __init__(self, at_unix_ms: _Optional[int] = ..., from_budget: _Optional[float] = ..., to_budget: _Optional[float] = ..., reason: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class SpeedPoint(_message.Message):
    __slots__ = ("budget", "speedup")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SPEEDUP_FIELD_NUMBER: _ClassVar[int]
    budget: float
    speedup: float
    def __init__(self, budget: _Optional[float] = ..., speedup: _Optional[float] = ...) -> None: ...

class LoadSignals(_message.Message):
    __slots__ = ("arrival_rate_short", "arrival_rate_long", "oldest_waiting_s", "work_per_request_s", "slots", "samples_since_change", "late_since_change", "speed_curve")
    ARRIVAL_RATE_SHORT_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_RATE_LONG_FIELD_NUMBER: _ClassVar[int]
    OLDEST_WAITING_S_FIELD_NUMBER: _ClassVar[int]
    WORK_PER_REQUEST_S_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_SINCE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    LATE_SINCE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    SPEED_CURVE_FIELD_NUMBER: _ClassVar[int]
    arrival_rate_short: float
    arrival_rate_long: float
    oldest_waiting_s: float
    work_per_request_s: float
    slots: int
    samples_since_change: int
    late_since_change: int
    speed_curve: _containers.RepeatedCompositeFieldContainer[SpeedPoint]
    def __init__(self, arrival_rate_short: _Optional[float] = ..., arrival_rate_long: _Optional[float] = ..., oldest_waiting_s: _Optional[float] = ..., work_per_request_s: _Optional[float] = ..., slots: _Optional[int] = ..., samples_since_change: _Optional[int] = ..., late_since_change: _Optional[int] = ..., speed_curve: _Optional[_Iterable[_Union[SpeedPoint, _Mapping]]] = ...) -> None: ...

class QualityPoint(_message.Message):
    __slots__ = ("budget", "expected_loss")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_LOSS_FIELD_NUMBER: _ClassVar[int]
    budget: float
    expected_loss: float
    def __init__(self, budget: _Optional[float] = ..., expected_loss: _Optional[float] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("pod_name", "model", "sent_at_unix_ms", "ttft", "inter_token", "queue_depth", "running_sequences", "tokens_per_s", "applied_budget", "expected_quality_loss", "floor", "ceiling", "mode", "ready", "gpu_memory_used_bytes", "gpu_memory_total_bytes", "memory_source", "kv_usage", "last_decision", "applied_epoch", "applied_sequence", "min_budget", "quality_curve", "requests_total", "requests_failed", "warnings", "load")
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_FIELD_NUMBER: _ClassVar[int]
    INTER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    RUNNING_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    APPLIED_BUDGET_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_QUALITY_LOSS_FIELD_NUMBER: _ClassVar[int]
    FLOOR_FIELD_NUMBER: _ClassVar[int]
    CEILING_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    KV_USAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_DECISION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_EPOCH_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MIN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    QUALITY_CURVE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FAILED_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    pod_name: str
    model: str
    sent_at_unix_ms: int
    ttft: LatencySummary
    inter_token: LatencySummary
    queue_depth: int
    running_sequences: int
    tokens_per_s: float
    applied_budget: float
    expected_quality_loss: float
    floor: float
    ceiling: float
    mode: Mode
    ready: bool
    gpu_memory_used_bytes: int
    gpu_memory_total_bytes: int
    memory_source: str
    kv_usage: float
    last_decision: LocalDecision
    applied_epoch: int
    applied_sequence: int
    min_budget: float
    quality_curve: _containers.RepeatedCompositeFieldContainer[QualityPoint]
    requests_total: int
    requests_failed: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    load: LoadSignals
    def __init__(self, pod_name: _Optional[str] = ..., model: _Optional[str] = ..., sent_at_unix_ms: _Optional[int] = ..., ttft: _Optional[_Union[LatencySummary, _Mapping]] = ..., inter_token: _Optional[_Union[LatencySummary, _Mapping]] = ..., queue_depth: _Optional[int] = ..., running_sequences: _Optional[int] = ..., tokens_per_s: _Optional[float] = ..., applied_budget: _Optional[float] = ..., expected_quality_loss: _Optional[float] = ..., floor: _Optional[float] = ..., ceiling: _Optional[float] = ..., mode: _Optional[_Union[Mode, str]] = ..., ready: _Optional[bool] = ..., gpu_memory_used_bytes: _Optional[int] = ..., gpu_memory_total_bytes: _Optional[int] = ..., memory_source: _Optional[str] = ..., kv_usage: _Optional[float] = ..., last_decision: _Optional[_Union[LocalDecision, _Mapping]] = ..., applied_epoch: _Optional[int] = ..., applied_sequence: _Optional[int] = ..., min_budget: _Optional[float] = ..., quality_curve: _Optional[_Iterable[_Union[QualityPoint, _Mapping]]] = ..., requests_total: _Optional[int] = ..., requests_failed: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ..., load: _Optional[_Union[LoadSignals, _Mapping]] = ...) -> None: ...
