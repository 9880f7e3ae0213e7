"""Fixtures of the end-to-end scenarios: one dev cluster per session (started here, stopped at the
end), the chart installed into it once, the operator running from it.

Every test here is marked `cluster`. Missing control-plane binaries fail (with a message to run
scripts/setup.sh); scenarios whose component is not written yet skip saying which one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_support import CHART, RELEASE, RELEASE_NAMESPACE, needs, operator_pod, pod_ready

from dynasparse.devcluster.fixture import DevCluster, wait_until
from dynasparse.devcluster.pytest_fixtures import (  # noqa: F401 - importing registers the fixtures
    dev_cluster, namespace, stop_clusters_after_folder,
)

# the folder's cluster stops after its last test, not at the end of the session
pytest_runtest_teardown = stop_clusters_after_folder(__file__)


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.cluster)

@pytest.fixture(scope="session")
def chart_installed(dev_cluster: DevCluster) -> DevCluster:  # noqa: F811 - the fixture above
    """`helm install` of the repository's chart, once per session (scenario 1 checks it in depth).
    The workers' cache volume is this machine's model cache (a hostPath), so that worker pods find
    the dequantized default model and its calibration instead of making them again in each pod."""
    import json

    from dynasparse_worker.models.loading import cache_root

    cache = json.dumps({"hostPath": {"path": str(cache_root()), "type": "DirectoryOrCreate"}})
    dev_cluster.helm("upgrade", "--install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
                     "--create-namespace", "--set", "operator.image.repository=dynasparse-operator",
                     "--set", "config.control.intervalSeconds=1",
                     "--set-json", f"config.worker.cacheVolume={cache}")
    wait_until(lambda: dev_cluster.api.exists("/apis/dynasparse.io/v1alpha1/adaptivemodels"), 30,
               "the AdaptiveModel API to be served")
    return dev_cluster


@pytest.fixture(scope="session")
def operator_running(chart_installed: DevCluster) -> DevCluster:
    needs("dynasparse_operator.commands.run", "the operator's `dynasparse operator` command")
    try:
        wait_until(lambda: pod_ready(operator_pod(chart_installed)), 90, "the operator pod to be Ready")
    except AssertionError as exc:
        pod = operator_pod(chart_installed)
        log = chart_installed.pod_log(RELEASE_NAMESPACE, pod["metadata"]["name"]) if pod else "(no pod)"
        raise AssertionError(f"{exc}\noperator log:\n{log[-4000:]}") from None
    return chart_installed
