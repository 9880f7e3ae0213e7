"""Sliding-window percentiles and rates; the development PKI's certificates."""

import ipaddress

from cryptography import x509

from dynasparse_worker.control.memory import MemoryProbe
from dynasparse_worker.control.pki import make_dev_bundle
from dynasparse_worker.control.window import SlidingWindow, percentile


def test_percentiles_use_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 95) == 95.0
    assert percentile([], 95) == 0.0


def test_window_forgets_samples_older_than_its_span():
    window = SlidingWindow(window_s=10.0)
    window.add(0.0, 1.0)
    window.add(5.0, 0.010)
    assert window.summary_ms(now=12.0).count == 1
    assert window.summary_ms(now=12.0).p95_ms == 10.0


def test_rate_is_tokens_per_second_over_the_window():
    window = SlidingWindow(window_s=10.0)
    for t in range(5):
        window.add(float(t), 10.0)
    assert window.rate(now=5.0) == 50.0 / 5.0


def test_dev_bundle_server_certificate_covers_localhost_and_loopback_and_chains_to_the_ca():
    bundle = make_dev_bundle()
    ca = x509.load_pem_x509_certificate(bundle["ca.crt"])
    server = x509.load_pem_x509_certificate(bundle["server.crt"])
    client = x509.load_pem_x509_certificate(bundle["client.crt"])
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)


def test_memory_probe_without_a_gpu_names_its_fallback():
    reading = MemoryProbe().read()
    assert reading.source == "nvml" or reading.source.startswith("fallback:process-rss")
    assert reading.total_bytes > 0 and 0 < reading.used_bytes
