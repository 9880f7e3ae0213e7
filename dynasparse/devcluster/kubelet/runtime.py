"""One pod's processes: start each container, watch it, probe it, restart it, stop it.

Owned by `agent` (one `PodRuntime` per pod bound to our nodes). Nothing here blocks: process exits
are polled, probes run on a shared thread pool, and termination is SIGTERM now and SIGKILL when the
grace period is over, checked on each `poll`.

Restarts follow a real kubelet: a container that exits, or cannot even be started (a missing
executable: `StartError`), is restarted under its pod's restart policy after a back-off of 10 s,
20 s, ... capped at 5 min, and reported meanwhile as waiting in `CrashLoopBackOff`; the pod stays
Running, so its ReplicaSet keeps it instead of replacing it over and over.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Callable

from dynasparse.devcluster.kubelet import podspec, probes, volumes
from dynasparse.devcluster.kubelet.status import ContainerView
from dynasparse.devcluster.nodes import now_rfc3339
from dynasparse.devcluster.processes import signal_group

BACKOFF_START, BACKOFF_MAX = 10.0, 300.0
BACKOFF_RESET_AFTER = 600.0  # a container that ran this long starts its back-off over
START_ERROR_EXIT_CODE = 128  # what container runtimes report for a process that never started


@dataclasses.dataclass
class ProbeState:
    spec: dict
    next_at: float
    successes: int = 0
    failures: int = 0
    future: Future | None = None


@dataclasses.dataclass
class Container:
    spec: dict
    process: subprocess.Popen | None = None
    view: ContainerView = None  # type: ignore[assignment]
    started_mono: float = 0.0
    restart_at: float | None = None
    backoff: float = BACKOFF_START
    kill_deadline: float | None = None
    kill_reason: str = ""
    ready_probe: ProbeState | None = None
    live_probe: ProbeState | None = None
    startup_probe: ProbeState | None = None
    started_ok: bool = True  # the startup probe has succeeded (or there is none)
    argv: list[str] = dataclasses.field(default_factory=list)
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def as_process(self) -> bool:
        return podspec.runs_as_process(self.spec.get("image", ""))


@dataclasses.dataclass
class PodContext:
    """What a pod needs from the kubelet: the interpreter, base env, lookups, token minting."""

    python: str
    base_env: dict[str, str]
    lookup: podspec.Lookup
    token: Callable[[dict, str | None, int], str]  # (pod, audience, expiration) -> token
    kubeconfig_for: Callable[[dict, Path], Path | None]  # (pod, pod_dir) -> kubeconfig path
    executor: Executor
    backoff_start: float = BACKOFF_START
    backoff_max: float = BACKOFF_MAX


class PodRuntime:
    def __init__(self, pod: dict, pod_ip: str, pod_dir: Path, ctx: PodContext):
        self.uid = pod["metadata"]["uid"]
        self.pod_ip, self.pod_dir, self.ctx = pod_ip, pod_dir, ctx
        self.started_at = now_rfc3339()
        self.prepared = False
        self.waiting_message = ""
        self.terminating = False
        self.policy = pod["spec"].get("restartPolicy", "Always")
        self.containers = {
            c["name"]: Container(spec=c, view=ContainerView(name=c["name"], image=c.get("image", ""),
                                                            state="waiting"),
                                 backoff=ctx.backoff_start)
            for c in pod["spec"]["containers"]
        }
        self.volume_dirs: dict[str, str] = {}
        self.volumes_written_at: float | None = None
        self.env_base: dict[str, str] = {}

    # ---- start -------------------------------------------------------------------------------
    def prepare(self, pod: dict) -> bool:
        """Write volumes and credentials; False (with `waiting_message`) while something is missing."""
        if self.prepared:
            return True
        try:
            self.pod_dir.mkdir(parents=True, exist_ok=True)
            self.volume_dirs = volumes.materialise(
                pod, self.pod_dir, self.pod_ip, self.ctx.lookup,
                lambda aud, exp: self.ctx.token(pod, aud, exp))
            env = dict(self.ctx.base_env)
            env.update({"HOSTNAME": pod["metadata"]["name"], "DYNASPARSE_POD_DIR": str(self.pod_dir),
                        "DYNASPARSE_POD_IP": self.pod_ip})
            kubeconfig = self.ctx.kubeconfig_for(pod, self.pod_dir)
            if kubeconfig is not None:
                env["KUBECONFIG"] = str(kubeconfig)
            self.env_base = env
            for c in self.containers.values():
                if c.as_process:
                    c.argv, c.env = podspec.process_spec(pod, c.spec, self.pod_ip, self.ctx.python,
                                                         self.ctx.lookup, self.volume_dirs)
        except podspec.NotReadyYet as exc:
            self.waiting_message = str(exc)
            for c in self.containers.values():
                c.view.message = str(exc)
            return False
        self.prepared = True
        return True

    def _refresh_volumes(self, pod: dict, now: float) -> None:
        """Rewrite the volumes from their sources every volumes.REFRESH_S (the first poll after
        `prepare` only starts the clock); a source gone missing keeps the files it left."""
        if self.volumes_written_at is None:
            self.volumes_written_at = now
        if now - self.volumes_written_at < volumes.REFRESH_S:
            return
        self.volumes_written_at = now
        try:
            volumes.materialise(pod, self.pod_dir, self.pod_ip, self.ctx.lookup,
                                lambda aud, exp: self.ctx.token(pod, aud, exp))
        except podspec.NotReadyYet:
            pass

    def _start(self, c: Container, now: float) -> None:
        c.view.message = ""
        c.restart_at = None
        c.started_mono = now
        c.view.started_at, c.view.finished_at, c.view.exit_code = now_rfc3339(), None, None
        c.view.state, c.view.reason, c.view.ready, c.view.will_restart = "running", "", False, False
        c.started_ok = "startupProbe" not in c.spec
        for attr, key in (("ready_probe", "readinessProbe"), ("live_probe", "livenessProbe"),
                          ("startup_probe", "startupProbe")):
            spec = c.spec.get(key)
            setattr(c, attr, ProbeState(spec, now + float(spec.get("initialDelaySeconds", 0))) if spec else None)
        if not c.as_process:
            c.view.ready = True
            return
        log = open(self.pod_dir / f"{c.spec['name']}.log", "ab")
        try:
            c.process = subprocess.Popen(c.argv, env={**self.env_base, **c.env}, cwd=self.pod_dir,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        except OSError as exc:
            c.process = None
            terminated = {"exitCode": START_ERROR_EXIT_CODE, "reason": "StartError",
                          "message": str(exc), "startedAt": c.view.started_at,
                          "finishedAt": now_rfc3339()}
            if self._restarts(START_ERROR_EXIT_CODE):
                self._back_off(c, now, terminated, str(exc))
            else:
                self._terminated(c, START_ERROR_EXIT_CODE, "StartError", terminated["finishedAt"])
            return
        finally:
            log.close()
        c.view.pid = c.process.pid
        (self.pod_dir / f"{c.spec['name']}.pid").write_text(f"{c.process.pid}\n")

    # ---- steady state ------------------------------------------------------------------------
    def poll(self, pod: dict, now: float) -> None:
        """Advance every container one step: start, reap, restart, probe, escalate kills."""
        if self.terminating or not self.prepare(pod):
            self._reap_all(now)
            return
        self._refresh_volumes(pod, now)
        policy = pod["spec"].get("restartPolicy", "Always")
        for c in self.containers.values():
            if c.view.state == "waiting" and c.restart_at is None and not c.view.restart_count \
                    and not c.view.started_at:
                self._start(c, now)
            elif c.view.state == "waiting" and c.restart_at is not None and now >= c.restart_at:
                c.view.restart_count += 1
                self._start(c, now)
            self._reap(c, now, policy)
            if c.view.state == "running":
                self._probe(c, now, pod)

    def _reap(self, c: Container, now: float, policy: str | None) -> None:
        if c.process is None or c.process.poll() is None:
            if c.kill_deadline is not None and now >= c.kill_deadline and c.process is not None:
                signal_group(c.process.pid, signal.SIGKILL)
            return
        code = c.process.returncode
        code = 128 - code if code < 0 else code  # killed by signal N -> 128+N, as a runtime reports
        c.process, c.view.pid, c.kill_deadline = None, None, None
        (self.pod_dir / f"{c.spec['name']}.pid").unlink(missing_ok=True)
        finished = now_rfc3339()
        reason = c.kill_reason or ("Completed" if code == 0 else "Error")
        c.kill_reason = ""
        terminated = {"exitCode": code, "reason": reason, "startedAt": c.view.started_at,
                      "finishedAt": finished}
        if policy is not None and self._restarts(code, policy) and not self.terminating:
            if now - c.started_mono > BACKOFF_RESET_AFTER:
                c.backoff = self.ctx.backoff_start
            self._back_off(c, now, terminated)
        else:
            self._terminated(c, code, reason, finished)

    def _restarts(self, code: int, policy: str | None = None) -> bool:
        policy = policy or self.policy
        return policy == "Always" or (policy == "OnFailure" and code != 0)

    def _back_off(self, c: Container, now: float, terminated: dict, why: str = "") -> None:
        """Waiting in CrashLoopBackOff until `restart_at`; the next wait is twice as long."""
        c.view.last_terminated = terminated
        c.view.state, c.view.reason, c.view.ready = "waiting", "CrashLoopBackOff", False
        c.view.message = (f"back-off {c.backoff:.0f}s restarting failed container"
                          + (f": {why}" if why else ""))
        c.view.will_restart, c.restart_at = True, now + c.backoff
        c.backoff = min(c.backoff * 2, self.ctx.backoff_max)

    @staticmethod
    def _terminated(c: Container, code: int, reason: str, finished: str) -> None:
        c.view.state, c.view.exit_code, c.view.reason = "terminated", code, reason
        c.view.finished_at, c.view.ready, c.view.will_restart = finished, False, False

    def _probe(self, c: Container, now: float, pod: dict) -> None:
        for probe, kind in ((c.startup_probe, "startup"), (c.ready_probe, "readiness"),
                            (c.live_probe, "liveness")):
            if probe is None or (kind != "startup" and not c.started_ok) or (kind == "startup" and c.started_ok):
                continue
            if probe.future is not None and probe.future.done():
                ok = probe.future.result()
                probe.future = None
                probe.successes, probe.failures = (probe.successes + 1, 0) if ok else (0, probe.failures + 1)
                self._apply_probe(c, kind, probe, pod, now)
            if probe.future is None and now >= probe.next_at and c.as_process:
                probe.next_at = now + float(probe.spec.get("periodSeconds", 10))
                probe.future = self.ctx.executor.submit(probes.run_probe, probe.spec, self.pod_ip, c.spec)
        if c.ready_probe is None and c.started_ok:
            c.view.ready = True

    def _apply_probe(self, c: Container, kind: str, probe: ProbeState, pod: dict, now: float) -> None:
        success_needed = int(probe.spec.get("successThreshold", 1))
        failure_limit = int(probe.spec.get("failureThreshold", 3))
        if kind == "startup" and probe.successes >= 1:
            c.started_ok = True
        elif kind == "readiness":
            if probe.successes >= success_needed:
                c.view.ready = True
            elif probe.failures >= failure_limit:
                c.view.ready = False
        elif kind == "liveness" and probe.failures >= failure_limit and c.kill_deadline is None:
            self._kill(c, now, _grace(pod), "Error")

    # ---- stop --------------------------------------------------------------------------------
    def _kill(self, c: Container, now: float, grace: float, reason: str = "") -> None:
        c.view.ready = False
        if c.process is not None and c.process.poll() is None:
            c.kill_reason = reason
            signal_group(c.process.pid, signal.SIGTERM)
            c.kill_deadline = now + grace

    def begin_termination(self, grace: float, now: float) -> None:
        if self.terminating:
            return
        self.terminating = True
        for c in self.containers.values():
            c.restart_at = None
            self._kill(c, now, grace)

    def _reap_all(self, now: float) -> None:
        for c in self.containers.values():
            self._reap(c, now, None)
            if self.terminating and c.view.state != "terminated" and c.process is None:
                c.view.state, c.view.exit_code = "terminated", c.view.exit_code or 0
                c.view.finished_at = c.view.finished_at or now_rfc3339()
                c.view.will_restart, c.view.ready = False, False

    def finished(self) -> bool:
        """True once no process of this pod is left."""
        return all(c.process is None for c in self.containers.values())

    def kill_now(self) -> None:
        for c in self.containers.values():
            if c.process is not None:
                signal_group(c.process.pid, signal.SIGKILL)
                try:
                    c.process.wait(5)
                except subprocess.TimeoutExpired:
                    pass
                c.process = None

    def views(self) -> list[ContainerView]:
        return [c.view for c in self.containers.values()]


def _grace(pod: dict) -> float:
    meta = pod.get("metadata", {})
    if meta.get("deletionGracePeriodSeconds") is not None:
        return float(meta["deletionGracePeriodSeconds"])
    return float(pod["spec"].get("terminationGracePeriodSeconds", 30))


def grace_period(pod: dict) -> float:
    return _grace(pod)


