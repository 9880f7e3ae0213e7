"""pytest fixtures over `fixture.dev_cluster`, imported by `e2e/conftest.py` and
`tests/cluster/conftest.py` (importing a fixture into a conftest registers it there).

* `dev_cluster` (session): one cluster for the whole session, 4 GPU nodes + 1 CPU node. Missing
  binaries fail the test with a message saying to run scripts/setup.sh: CI builds them first.
* `namespace`: a fresh namespace per test, deleted afterwards.
* `stop_clusters_after_folder(conftest_file)`: a `pytest_runtest_teardown` hook for a conftest that
  stops the folder's cluster after its last test. Each conftest importing `dev_cluster` gets its own
  instance; without the hook all of them would run to the end of the session, and two idle control
  planes take most of a core from the next folder's scenarios on a small machine.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from dynasparse.devcluster.errors import DevClusterError
from dynasparse.devcluster.fixture import DevCluster, dev_cluster as _start


class _Running:
    """A started cluster's context manager, stopped once (by the folder hook or the session end)."""

    def __init__(self, manager):
        self.manager, self.stopped = manager, False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.manager.__exit__(None, None, None)


_running: list[_Running] = []


@pytest.fixture(scope="session")
def dev_cluster(tmp_path_factory) -> DevCluster:
    state_dir = tmp_path_factory.mktemp("dev-cluster")
    nodes = int(os.environ.get("DYNASPARSE_DEV_NODES", "4"))
    problem = None
    try:
        manager = _start(state_dir, gpu_nodes=nodes)
        cluster = manager.__enter__()
    except DevClusterError as exc:
        problem = str(exc)
    if problem:
        pytest.fail(f"cannot start the dev cluster: {problem}", pytrace=False)
    running = _Running(manager)
    _running.append(running)
    try:
        yield cluster
    finally:
        running.stop()


def stop_clusters_after_folder(conftest_file: str):
    """`pytest_runtest_teardown = stop_clusters_after_folder(__file__)` in a conftest: once the next
    test is outside that conftest's folder (or there is none), stop the clusters started so far.
    Runs after the item's own fixtures are torn down (its namespace is deleted first)."""
    folder = Path(conftest_file).resolve().parent

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_teardown(item, nextitem) -> None:
        if nextitem is not None and folder in Path(str(nextitem.fspath)).resolve().parents:
            return
        while _running:
            _running.pop().stop()

    return pytest_runtest_teardown


@pytest.fixture
def namespace(dev_cluster: DevCluster) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    dev_cluster.api.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                 "metadata": {"name": name}})
    yield name
    dev_cluster.api.delete(f"/api/v1/namespaces/{name}")
