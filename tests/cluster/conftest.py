"""Fixtures of the cluster tests: a session dev cluster (started by the tests themselves) and a
namespace per test. The unit tests of this folder need neither."""

from dynasparse.devcluster.pytest_fixtures import dev_cluster, namespace  # noqa: F401 - registers fixtures
