"""Background processes of a dev cluster: start with a log file and a pid file, check, stop.

`cluster.up()` starts each server through `start()`; `cluster.down()` calls `stop_all()`, which
stops them in reverse start order (SIGTERM, then SIGKILL after a grace period). Pid files live in
`DIR/pids/` and logs in `DIR/logs/`, so a later `down` from another shell finds everything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from dynasparse.devcluster.errors import DevClusterError


def pid_dir(state_dir: Path) -> Path:
    return state_dir / "pids"


def log_path(state_dir: Path, name: str) -> Path:
    return state_dir / "logs" / f"{name}.log"


def start(state_dir: Path, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    """Start `argv` detached (own session), output to DIR/logs/<name>.log; record its pid."""
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    pid_dir(state_dir).mkdir(parents=True, exist_ok=True)
    with open(log_path(state_dir, name), "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=state_dir, start_new_session=True)
    (pid_dir(state_dir) / f"{name}.pid").write_text(f"{proc.pid}\n")
    with open(pid_dir(state_dir) / "order", "a") as order:
        order.write(name + "\n")
    return proc.pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def recorded(state_dir: Path) -> dict[str, int]:
    """name -> pid of every process `start` recorded, in start order."""
    order_file = pid_dir(state_dir) / "order"
    names = order_file.read_text().split() if order_file.exists() else []
    out: dict[str, int] = {}
    for name in names:
        pid_file = pid_dir(state_dir) / f"{name}.pid"
        if pid_file.exists():
            out[name] = int(pid_file.read_text().strip())
    return out


def signal_group(pid: int, sig: int) -> bool:
    """Send `sig` to the process group `pid` leads (or to `pid` alone); False if it is gone."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
    return True


def terminate(pid: int, grace: float) -> None:
    """SIGTERM the process group `pid` leads, wait up to `grace` s, then SIGKILL it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not signal_group(pid, sig):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not alive(pid):
                _reap(pid)
                return
            time.sleep(0.05)
    _reap(pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_all(state_dir: Path, grace: float = 10.0) -> list[str]:
    """Stop every recorded process, last started first; return the names that were running."""
    stopped = []
    for name, pid in reversed(list(recorded(state_dir).items())):
        if alive(pid):
            terminate(pid, grace)
            stopped.append(name)
        (pid_dir(state_dir) / f"{name}.pid").unlink(missing_ok=True)
    (pid_dir(state_dir) / "order").unlink(missing_ok=True)
    return stopped


def log_tail(state_dir: Path, name: str, lines: int = 15) -> str:
    path = log_path(state_dir, name)
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_for(check: Callable[[], bool], timeout: float, what: str, state_dir: Path, name: str,
             pid: int | None = None) -> None:
    """Poll `check` until true; on timeout or if `pid` dies, raise with the tail of its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if pid is not None and not alive(pid):
            raise DevClusterError(f"{name} exited while waiting for {what}; last lines of "
                                  f"{log_path(state_dir, name)}:\n{log_tail(state_dir, name)}")
        time.sleep(0.2)
    raise DevClusterError(f"timed out after {timeout:.0f} s waiting for {what}; last lines of "
                          f"{log_path(state_dir, name)}:\n{log_tail(state_dir, name)}")
