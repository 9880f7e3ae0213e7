"""Fixtures of the operator tests: the dev cluster (for tests marked `cluster`) and a namespace."""

from dynasparse.devcluster.pytest_fixtures import (  # noqa: F401 - importing registers the fixtures
    dev_cluster, namespace, stop_clusters_after_folder,
)

# the folder's cluster stops after its last test, not at the end of the session
pytest_runtest_teardown = stop_clusters_after_folder(__file__)
