"""Pod status as the process kubelet reports it: phase, conditions, container states."""

from dynasparse.devcluster.kubelet.status import ContainerView, pod_phase, pod_status, status_differs

POD = {"metadata": {"name": "p"}, "spec": {},
       "status": {"conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "T0"},
                                 {"type": "DisruptionTarget", "status": "True", "lastTransitionTime": "T0"}]}}


def test_a_pod_is_pending_until_its_container_starts_and_running_while_it_restarts():
    assert pod_phase([ContainerView("c", "i", "waiting")]) == "Pending"
    assert pod_phase([ContainerView("c", "i", "running", started_at="T1")]) == "Running"
    assert pod_phase([ContainerView("c", "i", "waiting", restart_count=1, will_restart=True,
                                    started_at="T1")]) == "Running"


def test_a_finished_pod_succeeds_only_if_every_container_exited_zero():
    done = ContainerView("a", "i", "terminated", exit_code=0, started_at="T1")
    failed = ContainerView("b", "i", "terminated", exit_code=137, started_at="T1")
    assert pod_phase([done]) == "Succeeded"
    assert pod_phase([done, failed]) == "Failed"


def test_ready_follows_the_containers_and_keeps_conditions_owned_by_others():
    status = pod_status(POD, [ContainerView("c", "i", "running", started_at="T1", ready=True, pid=42)],
                        "127.9.1.1", "T2", "T1")
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["PodScheduled"]["lastTransitionTime"] == "T0"  # unchanged status keeps its time
    assert conditions["DisruptionTarget"]["status"] == "True"
    assert status["podIP"] == "127.9.1.1" and status["phase"] == "Running"
    assert status["containerStatuses"][0]["containerID"] == "process://42"


def test_an_identical_status_is_not_patched_again():
    views = [ContainerView("c", "i", "running", started_at="T1")]
    first = pod_status(POD, views, "127.9.1.1", "T2", "T1")
    again = pod_status({**POD, "status": first}, views, "127.9.1.1", "T3", "T1")
    assert not status_differs(first, again)


def test_conditions_stored_in_another_order_are_not_a_change():
    views = [ContainerView("c", "i", "running", started_at="T1")]
    desired = pod_status(POD, views, "127.9.1.1", "T2", "T1")
    stored = {**desired, "conditions": list(reversed(desired["conditions"]))}
    assert not status_differs(stored, desired)
