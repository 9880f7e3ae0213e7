"""What an AdaptiveModel may ask of its worker pods: images, priority classes and extra arguments
outside the operator's allow-lists are refused with a message that says what to do."""

from __future__ import annotations

from dynasparse_operator import worker_policy
from dynasparse_operator.settings import WorkerSettings, load_settings
from dynasparse_operator.spec import parse_spec

BASE = {"model": "default", "slo": {"ttftP95Ms": 500}, "quality": {"maxLoss": 0.2}}
SETTINGS = WorkerSettings(image="ghcr.io/dynasparse/dynasparse-worker:0.1.0",
                          allowed_images=["registry.example.com/ml/*", "quay.io/team/worker"],
                          allowed_priority_classes=["inference"])


def refused(worker=None, scheduling=None, settings=SETTINGS) -> list[str]:
    spec = parse_spec({**BASE, "worker": worker or {}, "scheduling": scheduling or {}})
    return worker_policy.violations(spec, settings)


def test_the_default_image_and_its_repository_are_always_allowed():
    assert refused() == []
    assert refused({"image": "ghcr.io/dynasparse/dynasparse-worker:0.2.0"}) == []
    assert refused({"image": "ghcr.io/dynasparse/dynasparse-worker@sha256:" + "a" * 64}) == []


def test_listed_repositories_and_patterns_are_allowed_and_anything_else_is_refused():
    assert refused({"image": "quay.io/team/worker:1"}) == []
    assert refused({"image": "registry.example.com/ml/any/thing:2"}) == []
    (message,) = refused({"image": "docker.io/evil/miner:latest"})
    assert "'docker.io/evil/miner:latest' is not allowed" in message and "allowedImages" in message
    # a look-alike repository is not the allowed one
    assert refused({"image": "quay.io/team/worker-evil:1"})
    assert refused({"image": "ghcr.io/dynasparse/dynasparse-worker.evil.com/x:1"})


def test_a_registry_port_is_not_taken_for_a_tag():
    settings = WorkerSettings(image="localhost:5000/dynasparse-worker:dev")
    assert refused({"image": "localhost:5000/dynasparse-worker:other"}, settings=settings) == []
    assert refused({"image": "localhost:5001/dynasparse-worker:dev"}, settings=settings)


def test_priority_classes_need_the_allow_list_which_is_empty_by_default():
    assert refused(scheduling={"priorityClassName": "inference"}) == []
    (message,) = refused(scheduling={"priorityClassName": "system-node-critical"})
    assert "priorityClassName 'system-node-critical' is not allowed" in message
    assert refused(scheduling={"priorityClassName": "inference"}, settings=load_settings({}).worker)


def test_extra_args_may_tune_the_worker_but_never_rewire_it():
    defaults = load_settings({}).worker
    assert refused({"extraArgs": ["--max-queue", "32", "--kv-tokens=4096", "--log-level", "debug"]},
                   settings=defaults) == []
    for args in (["--api-key", "x"], ["--host=0.0.0.0"], ["--tls-dir", "/tmp"], ["--api"],
                 ["--port", "1"], ["--model", "evil"]):
        (message,) = refused({"extraArgs": args}, settings=defaults)
        assert "is not allowed" in message and "the operator sets" in message, args
    (message,) = refused({"extraArgs": ["stray"]}, settings=defaults)
    assert "'stray' is not a flag's value" in message
