"""Fixtures for the server tests: the real default model (loaded once), dev mTLS certificates, and
real workers (`WorkerRuntime`) on loopback, each in its own thread with its own event loop."""

from __future__ import annotations

import contextlib
import queue
import time
import threading
from pathlib import Path

import grpc
import pytest

from dynasparse_proto import control_pb2, control_pb2_grpc
from dynasparse_worker.control.fast_loop import FastLoopConfig
from dynasparse_worker.control.pki import make_dev_bundle, write_bundle
from dynasparse_worker.server import event_loop
from dynasparse_worker.server.runtime import ServeSettings, WorkerRuntime


@pytest.fixture(scope="session")
def loaded_model():
    import torch

    from dynasparse_worker.models.loading import load_model

    torch.set_num_threads(2)
    return load_model("default")


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory) -> Path:
    return write_bundle(make_dev_bundle(), tmp_path_factory.mktemp("tls"))[0].parent


class RunningWorker:
    """A WorkerRuntime running in a background thread; `url` and `control_target` to reach it."""

    def __init__(self, settings: ServeSettings, loaded, tls_dir: Path, gated=None):
        self.runtime = WorkerRuntime(settings, loaded=loaded, gated=gated)
        self.tls_dir = tls_dir
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        if not self.runtime.loaded.wait(120):
            raise RuntimeError("worker did not start")

    def _main(self) -> None:
        self.exit_code = event_loop.run(self.runtime.run())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.runtime.http_port}"

    @property
    def control_target(self) -> str:
        return f"127.0.0.1:{self.runtime.control_port}"

    def channel(self, with_client_cert: bool = True) -> grpc.Channel:
        ca = (self.tls_dir / "ca.crt").read_bytes()
        if with_client_cert:
            creds = grpc.ssl_channel_credentials(ca, (self.tls_dir / "client.key").read_bytes(),
                                                 (self.tls_dir / "client.crt").read_bytes())
        else:
            creds = grpc.ssl_channel_credentials(ca)
        return grpc.secure_channel(self.control_target, creds,
                                   options=[("grpc.ssl_target_name_override", "localhost")])

    def stub(self) -> control_pb2_grpc.ControlStub:
        return control_pb2_grpc.ControlStub(self.channel())

    def stop(self) -> None:
        self.runtime.shutdown_now()
        self.thread.join(30)


def settings(**overrides) -> ServeSettings:
    base = dict(port=0, control_port=0, pod_name="test-worker", max_batch_size=4,
                max_seq_len=256, kv_tokens=1024, uncalibrated_min_budget=0.3,
                report_interval_s=0.5, drain_grace_s=20.0)
    base.update(overrides)
    return ServeSettings(**base)


@contextlib.contextmanager
def running_worker(loaded, tls_dir, gated=None, **overrides):
    worker = RunningWorker(settings(tls_dir=tls_dir, **overrides), loaded, tls_dir, gated)
    try:
        yield worker
    finally:
        worker.stop()


class Session:
    """An operator-side Session: `send` ControlMessages, `next_report(pred)` reads reports."""

    def __init__(self, stub: control_pb2_grpc.ControlStub):
        self._out: queue.Queue = queue.Queue()
        self._call = stub.Session(iter(self._out.get, None))

    def send(self, **fields) -> None:
        self._out.put(control_pb2.ControlMessage(**fields))

    def next_report(self, pred=lambda r: True, timeout: float = 10.0) -> control_pb2.Report:
        deadline = time.monotonic() + timeout
        for report in self._call:
            if pred(report):
                return report
            if time.monotonic() > deadline:
                break
        raise AssertionError("no matching report")

    def close(self) -> None:
        self._out.put(None)
        self._call.cancel()


@pytest.fixture(name="Session")
def session_class():
    """The operator-side Session helper, for tests that talk to a worker like the operator does."""
    return Session


@pytest.fixture
def start_worker(loaded_model, tls_dir):
    """A context manager starting a fresh worker (optionally with another loaded model and its
    gated model) with settings overrides; stopped on exit."""
    def start(loaded=None, gated=None, **overrides):
        return running_worker(loaded or loaded_model, tls_dir, gated=gated, **overrides)

    return start


@pytest.fixture(scope="session")
def worker(loaded_model, tls_dir):
    """The shared worker: generous queue, no API key, mTLS control endpoint."""
    with running_worker(loaded_model, tls_dir) as w:
        yield w


@pytest.fixture(scope="session")
def tight_worker(loaded_model, tls_dir):
    """A worker made to saturate: one sequence at a time, a short queue, an API key, a fast loop
    that tightens at 2 waiting requests and relaxes only after 30 s."""
    fast = FastLoopConfig(queue_high=2, queue_low=0, relax_hold_s=30.0)
    with running_worker(loaded_model, tls_dir, max_batch_size=1, max_queue=3, api_key="sekret",
                        fast_loop=fast) as w:
        yield w
