"""Fixtures of the cluster tests: a session dev cluster (started by the tests themselves) and a
namespace per test. The unit tests of this folder need neither."""

from dynasparse.devcluster.pytest_fixtures import (  # noqa: F401 - importing registers the fixtures
    dev_cluster, namespace, stop_clusters_after_folder,
)

# the folder's cluster stops after its last test, not at the end of the session
pytest_runtest_teardown = stop_clusters_after_folder(__file__)
