"""Fixtures of the operator tests: the dev cluster (for tests marked `cluster`) and a namespace."""

from dynasparse.devcluster.pytest_fixtures import dev_cluster, namespace  # noqa: F401 - registers fixtures
