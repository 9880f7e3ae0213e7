"""pytest fixtures over `fixture.dev_cluster`, imported by `e2e/conftest.py` and
`tests/cluster/conftest.py` (importing a fixture into a conftest registers it there).

* `dev_cluster` (session): one cluster for the whole session, 4 GPU nodes + 1 CPU node. Missing
  binaries fail the test with a message saying to run scripts/setup.sh: CI builds them first.
* `namespace`: a fresh namespace per test, deleted afterwards.
"""

from __future__ import annotations

import os
import uuid

import pytest

from dynasparse.devcluster.errors import DevClusterError
from dynasparse.devcluster.fixture import DevCluster, dev_cluster as _start


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
    try:
        yield cluster
    finally:
        manager.__exit__(None, None, None)


@pytest.fixture
def namespace(dev_cluster: DevCluster) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    dev_cluster.api.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                 "metadata": {"name": name}})
    yield name
    dev_cluster.api.delete(f"/api/v1/namespaces/{name}")
