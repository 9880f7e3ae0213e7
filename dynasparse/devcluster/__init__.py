"""The development Kubernetes control plane: a real API server, controllers and scheduler on loopback,
plus a *process kubelet* that runs pods of our own images as local processes.

Used by `dynasparse dev-cluster` (build / up / down), by the pytest fixtures of `e2e/` and `tests/`, and
by anyone who wants to try the Helm chart without a cluster. Layout, one job per module:

* `binaries`  — build kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and helm into
  the cache folder once per machine, and find them (and etcd) afterwards;
* `pki`       — per-run certificates and the service-account signing key;
* `config`    — pure: command lines of each server, kubeconfigs, the cluster's state file;
* `processes` — start background processes with logs and pid files, stop them;
* `cluster`   — `up` / `down`: everything above in order, waiting until each piece is ready;
* `rest`      — a thin JSON client of the API server (dicts in, dicts out) for the kubelet and tests;
* `nodes`     — pure: the simulated nodes (GPU spot / on-demand, CPU) and their objects;
* `nodeops`   — helpers tests use to act on nodes as the cloud would (pressure, spot notices, cordon);
* `kubelet/`  — the process kubelet;
* `fixture`   — a context manager both pytest conftests use.
"""
