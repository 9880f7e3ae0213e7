"""The process kubelet: plays the kubelet of every simulated node of a dev cluster.

Started by `cluster.up()` as `python -m dynasparse.devcluster.kubelet --dir DIR`. It registers the
nodes, renews their Leases, and runs each pod bound to them: containers of our own images
(`dynasparse-worker`, `dynasparse-operator`, any image whose name contains `dynasparse`) become local
processes on the pod's own loopback address; other images are reported Running with no process.
See docs/DESIGN.md ("Dev cluster and the process kubelet") for what is and is not emulated.

* `podspec`  — pure: which containers we run, their argv, environment and path rewrites;
* `status`   — pure: pod status (phase, conditions, container states) from local state;
* `volumes`  — write Secret/ConfigMap/downward-API/token volumes into the pod's directory;
* `probes`   — HTTP/TCP readiness and liveness probes;
* `runtime`  — one pod's processes: start, restart with back-off, SIGTERM / grace / SIGKILL;
* `agent`    — the loop: nodes, leases, pod watch, sync, status patches, final deletion.
"""
