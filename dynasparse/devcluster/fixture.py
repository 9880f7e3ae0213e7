"""A running dev cluster as a context manager, with kubectl/helm wrappers: what the pytest fixtures
of `e2e/` and `tests/` yield.

    with dev_cluster(tmp_path / "cluster") as cluster:
        cluster.kubectl("get", "nodes")

It raises DevClusterError (which the conftests turn into a test failure that says to run
scripts/setup.sh) when the control plane is not built, and stops everything on exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

from dynasparse.devcluster import cluster
from dynasparse.devcluster.config import ClusterConfig
from dynasparse.devcluster.errors import DevClusterError
from dynasparse.devcluster.rest import Api


@dataclasses.dataclass
class DevCluster:
    config: ClusterConfig
    kubeconfig: Path
    bin_dir: Path
    api: Api
    startup_seconds: float

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses that should talk to this cluster."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}:{env.get('PATH', '')}"
        env["HELM_CACHE_HOME"] = str(self.config.root / "helm" / "cache")
        env["HELM_CONFIG_HOME"] = str(self.config.root / "helm" / "config")
        env["HELM_DATA_HOME"] = str(self.config.root / "helm" / "data")
        return env

    def _tool(self, tool: str, args: tuple[str, ...], check: bool, timeout: float,
              stdin: str | None) -> subprocess.CompletedProcess:
        result = subprocess.run([str(self.bin_dir / tool), *args], env=self.env, capture_output=True,
                                text=True, timeout=timeout, input=stdin)
        if check and result.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60, stdin: str | None = None):
        return self._tool("kubectl", args, check, timeout, stdin)

    def helm(self, *args: str, check: bool = True, timeout: float = 180, stdin: str | None = None):
        return self._tool("helm", args, check, timeout, stdin)

    def logs_dir(self) -> Path:
        return self.config.root / "logs"

    def pod_log(self, namespace: str, pod: str) -> str:
        """Logs of a pod run by the process kubelet (there is no `kubectl logs` without a kubelet API)."""
        out = []
        for d in sorted((self.config.root / "pods").glob(f"{namespace}_{pod}_*")):
            for log in sorted(d.glob("*.log")):
                out.append(f"--- {log.name}\n{log.read_text(errors='replace')}")
        return "\n".join(out) or "(no log)"


def wait_until(check: Callable[[], object], timeout: float, what: str, interval: float = 0.5):
    """Poll `check` until it returns something truthy; return it, or fail saying what never happened."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - remembered for the message
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                         + (f" (last error: {last_error})" if last_error else ""))


@contextlib.contextmanager
def dev_cluster(state_dir: Path, gpu_nodes: int = 4, timeout: float = 180.0) -> Iterator[DevCluster]:
    info = cluster.up(Path(state_dir), gpu_nodes=gpu_nodes, timeout=timeout)
    try:
        yield DevCluster(config=info.config, kubeconfig=info.kubeconfig, bin_dir=info.bin_dir,
                         api=Api.for_cluster(info.config, "admin"), startup_seconds=info.startup_seconds)
    finally:
        cluster.down(Path(state_dir))


__all__ = ["DevCluster", "DevClusterError", "dev_cluster", "wait_until"]
