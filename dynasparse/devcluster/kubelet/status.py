"""Pure: the pod status the process kubelet reports, from its local view of each container.

Called by `agent` on every sync; it patches the result only when it differs from what the API
server has. Conditions keep their `lastTransitionTime` while their status is unchanged.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ContainerView:
    """What the runtime knows about one container at this instant."""

    name: str
    image: str
    state: str  # "waiting" | "running" | "terminated"
    reason: str = ""
    message: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    restart_count: int = 0
    ready: bool = False
    pid: int | None = None
    last_terminated: dict | None = None  # {"exitCode", "reason", "startedAt", "finishedAt"}
    will_restart: bool = False


def pod_phase(containers: list[ContainerView]) -> str:
    """Pending until every container started; Running while any runs or will restart;
    then Succeeded if all exited 0, else Failed."""
    if any(c.state == "waiting" and c.restart_count == 0 and not c.started_at for c in containers):
        return "Pending"
    if any(c.state == "running" or c.will_restart for c in containers):
        return "Running"
    return "Succeeded" if all(c.exit_code == 0 for c in containers) else "Failed"


def container_status(c: ContainerView) -> dict:
    if c.state == "running":
        state = {"running": {"startedAt": c.started_at}}
    elif c.state == "terminated":
        state = {"terminated": {"exitCode": c.exit_code if c.exit_code is not None else 0,
                                "reason": c.reason or ("Completed" if c.exit_code == 0 else "Error"),
                                "startedAt": c.started_at, "finishedAt": c.finished_at}}
    else:
        waiting = {"reason": c.reason or "ContainerCreating"}
        if c.message:
            waiting["message"] = c.message
        state = {"waiting": waiting}
    out = {"name": c.name, "image": c.image, "imageID": "", "ready": c.ready,
           "restartCount": c.restart_count, "started": c.state == "running", "state": state,
           "lastState": {"terminated": c.last_terminated} if c.last_terminated else {}}
    if c.pid:
        out["containerID"] = f"process://{c.pid}"
    return out


def _condition(kind: str, ok: bool, previous: dict[str, dict], now: str, reason: str = "") -> dict:
    status = "True" if ok else "False"
    prev = previous.get(kind)
    since = prev["lastTransitionTime"] if prev and prev.get("status") == status else now
    cond = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": since}
    if reason and not ok:
        cond["reason"] = reason
    return cond


def pod_status(pod: dict, containers: list[ContainerView], pod_ip: str | None, now: str,
               started_at: str) -> dict:
    """The whole `status` of a pod (conditions merged with the Scheduled one the scheduler wrote)."""
    previous = {c["type"]: c for c in (pod.get("status") or {}).get("conditions") or []}
    phase = pod_phase(containers)
    all_ready = bool(containers) and all(c.ready for c in containers)
    created = any(c.state != "waiting" or c.restart_count for c in containers)
    not_ready_reason = "PodCompleted" if phase in ("Succeeded", "Failed") else "ContainersNotReady"
    conditions = [
        _condition("PodReadyToStartContainers", created, previous, now),
        _condition("Initialized", True, previous, now),
        _condition("Ready", all_ready, previous, now, not_ready_reason),
        _condition("ContainersReady", all_ready, previous, now, not_ready_reason),
        _condition("PodScheduled", True, previous, now),
    ]
    # Conditions others own (DisruptionTarget from the eviction API, readiness gates) stay as they are.
    ours = {c["type"] for c in conditions}
    conditions += [c for t, c in previous.items() if t not in ours]
    status = {"phase": phase, "conditions": conditions, "hostIP": "127.0.0.1",
              "hostIPs": [{"ip": "127.0.0.1"}], "startTime": started_at,
              "containerStatuses": [container_status(c) for c in containers],
              "qosClass": (pod.get("status") or {}).get("qosClass", "BestEffort")}
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    return status


def _normalised(status: dict) -> dict:
    """Lists keyed by type/name become dicts: the API server may keep merged lists in another order."""
    out = dict(status)
    out["conditions"] = {c["type"]: c for c in status.get("conditions") or []}
    out["containerStatuses"] = {c["name"]: c for c in status.get("containerStatuses") or []}
    return out


def status_differs(current: dict, desired: dict) -> bool:
    """True when a patch would change what the API server shows (ignoring fields we do not own)."""
    have, want = _normalised(current or {}), _normalised(desired)
    return any(have.get(k) != v for k, v in want.items())
