"""Certificates age out and are renewed without an outage: the operator's client certificate is
re-issued at two thirds of its lifetime and streams reconnect with it; workers reload a renewed
server certificate from their mounted files before the next handshake; a worker cut off from its
operator keeps its bounds. Real mTLS gRPC on loopback, certificates with lifetimes of seconds
standing in for days, and an injectable clock where only the schedule is under test.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import grpc
import pytest

from dynasparse_operator import daemon, manifests, pki
from dynasparse_operator.grpc_client import ClientCertificates
from dynasparse_proto import control_pb2, control_pb2_grpc
from test_operator_control_stream import OWNER, make_loop, ready_pod, wait_for

DAY = dt.timedelta(days=1)
LIFETIME_S = 3.0  # one "month" of certificate lifetime, in real seconds


class SimulatedClock:
    def __init__(self) -> None:
        self.now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.now


def test_the_client_certificate_is_renewed_at_two_thirds_of_its_30_days_and_never_served_expired():
    clock = SimulatedClock()
    certs = ClientCertificates(pki.make_ca(), clock=clock)
    start = clock.now
    renewed_on = []
    for hour in range(31 * 24 * 3):  # 93 days, hour by hour
        clock.now = start + dt.timedelta(hours=hour)
        generation = certs.generation
        leaf = pki.KeyPair(certs.current().cert_pem, b"").certificate
        assert leaf.not_valid_before_utc <= clock.now < leaf.not_valid_after_utc
        assert leaf.not_valid_after_utc - clock.now > 9 * DAY, "a third of 30 days left, at least"
        if certs.generation != generation:
            renewed_on.append((clock.now - start) / DAY)
    assert [round(d) for d in renewed_on] == [20, 40, 60, 80]


def test_worker_certificates_are_renewed_with_a_third_of_their_lifetime_left():
    ca = pki.make_ca()
    issued = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    leaf = pki.issue(ca, "w", server=True, days=365, now=issued)
    assert not pki.needs_renewal(leaf.cert_pem, now=issued + 240 * DAY)
    assert pki.needs_renewal(leaf.cert_pem, now=issued + 245 * DAY)
    assert pki.needs_renewal(b"garbage")


async def test_the_control_loop_asks_for_the_worker_certificate_every_hour():
    clock = [0.0]
    renewals = []

    async def renew():
        renewals.append(clock[0])

    loop = make_loop(1, pki.make_ca(), [], [])
    loop.runtime.pods.clear()
    loop.deps.clock = lambda: clock[0]
    loop.deps.renew_worker_tls = renew
    loop.worker_tls_checked_at = 0.0
    for second in range(0, 3 * 3600 + 1, 600):
        clock[0] = float(second)
        await loop.step()
    assert renewals == [3600.0, 7200.0, 10800.0]
    assert daemon.WORKER_TLS_CHECK_S == 3600.0


class Kubelet:
    """Plays the operator's Secret renewal and kubelet's refresh of the mounted files: re-issues the
    worker's server certificate when `pki.needs_renewal` says so, writing the key first (a window
    in which the files do not match, as a non-atomic update would leave them)."""

    def __init__(self, directory, ca: pki.KeyPair) -> None:
        self.directory = directory
        self.ca = ca
        self.renewals = 0

    def issue(self) -> None:
        leaf = pki.issue(self.ca, "worker", server=True, dns_names=manifests.worker_dns_names(OWNER),
                         days=LIFETIME_S / 86400)
        (self.directory / "server.key").write_bytes(leaf.key_pem)
        (self.directory / "server.crt").write_bytes(leaf.cert_pem)

    async def run(self) -> None:
        while True:
            if pki.needs_renewal((self.directory / "server.crt").read_bytes()):
                self.issue()
                self.renewals += 1
            await asyncio.sleep(0.1)


async def start_short_lived_worker(directory):
    """The production control server on the files as they are (start_worker writes its own)."""
    from dynasparse_worker.control.service import TlsFiles, build_control_server
    from dynasparse_worker.control.supervisor import Supervisor
    from test_operator_control_stream import Actuator

    sup = Supervisor(Actuator(), pod_name="w0", model_name="chat", window_s=1.0,
                     report_interval_s=0.2)
    sup.model_loaded = True
    server, port, _ = build_control_server(sup, TlsFiles.from_dir(directory), "127.0.0.1", 0)
    await server.start()
    return sup, server, port


def handshake_works(port: int, tls) -> bool:
    """A brand-new connection with the operator's current certificate completes mTLS now."""
    creds = grpc.ssl_channel_credentials(tls.ca_pem, tls.key_pem, tls.cert_pem)
    name = manifests.worker_dns_names(OWNER)[0]
    with grpc.secure_channel(f"127.0.0.1:{port}", creds,
                             options=[("grpc.ssl_target_name_override", name)]) as channel:
        try:
            control_pb2_grpc.ControlStub(channel).GetStatus(control_pb2.StatusRequest(), timeout=3)
            return True
        except grpc.RpcError:
            return False


async def test_a_worker_cut_off_for_longer_than_every_certificate_lives_gets_its_stream_back(tmp_path):
    ca = pki.make_ca()
    kubelet = Kubelet(tmp_path, ca)
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    kubelet.issue()  # the worker's certificates live LIFETIME_S
    sup, server, port = await start_short_lived_worker(tmp_path)
    loop = make_loop(port, ca, [], [])
    loop.deps.tls = ClientCertificates(ca, days=LIFETIME_S / 86400)
    loop.pool._tls = loop.deps.tls
    stop = asyncio.Event()
    tasks = [asyncio.create_task(loop.run(stop.is_set)), asyncio.create_task(kubelet.run())]
    budgets = []

    async def watch():
        while True:
            budgets.append(sup.budget)
            await asyncio.sleep(0.02)

    tasks.append(asyncio.create_task(watch()))
    try:
        loop.runtime.wake.set()
        await wait_for(lambda: sup.control.epoch == loop.epoch and sup.budget > 0.85, timeout=5.0)
        first_sequence = sup.control.sequence
        budgets.clear()

        loop.runtime.pods.clear()  # the operator loses the pod: its stream closes
        loop.runtime.wake.set()
        await wait_for(lambda: not loop.pool.streams)
        cut_off_at = time.monotonic()
        await asyncio.sleep(1.3 * LIFETIME_S)  # every certificate in use at the cut has expired
        assert kubelet.renewals >= 1 and loop.deps.tls.current() is not None
        assert loop.deps.tls.generation >= 1

        loop.runtime.pods["w0"] = ready_pod()  # reachable again
        loop.runtime.wake.set()
        await wait_for(lambda: loop.pool.streams.get("w0") is not None
                       and loop.pool.streams["w0"].connected, timeout=5.0)
        await wait_for(lambda: sup.control.sequence > first_sequence, timeout=5.0)
        print(f"stream back {time.monotonic() - cut_off_at:.1f} s after the cut; "
              f"{kubelet.renewals} worker and {loop.deps.tls.generation} operator renewals")
        assert min(budgets) > 0.85, "no fall to the quality floor (0.4) while cut off"
        assert await asyncio.to_thread(handshake_works, port, loop.deps.tls.current())

        connected_generation = loop.deps.tls.generation
        await wait_for(lambda: loop.deps.tls.generation > connected_generation, timeout=5.0)
        await wait_for(lambda: loop.pool.streams["w0"].connected, timeout=5.0)
        sequence = sup.control.sequence
        loop.last_sent.clear()
        loop.runtime.wake.set()
        await wait_for(lambda: sup.control.sequence > sequence, timeout=5.0)  # on the new one
        assert min(budgets) > 0.85
    finally:
        stop.set()
        loop.runtime.wake.set()
        for task in tasks[1:]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.stop(None)


def test_a_half_written_certificate_pair_is_never_served(tmp_path):
    from dynasparse_worker.control.service import CertificateReloader, TlsFiles

    ca = pki.make_ca()
    kubelet = Kubelet(tmp_path, ca)
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    kubelet.issue()
    reloader = CertificateReloader(TlsFiles.from_dir(tmp_path))
    assert reloader.fetch() is None, "unchanged files: keep the current configuration"
    other = pki.issue(ca, "worker", server=True)
    (tmp_path / "server.key").write_bytes(other.key_pem)  # the certificate is not there yet
    assert reloader.fetch() is None and reloader.reloads == 0
    (tmp_path / "server.crt").write_bytes(other.cert_pem)
    assert reloader.fetch() is not None and reloader.reloads == 1
    assert reloader.fetch() is None
    with pytest.raises(Exception, match="not a certificate and its key"):
        (tmp_path / "server.key").write_bytes(pki.issue(ca, "x", server=True).key_pem)
        CertificateReloader(TlsFiles.from_dir(tmp_path))
