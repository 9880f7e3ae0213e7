"""Run a container's readiness or liveness probe once against the pod's loopback address.

Called by `runtime` from a small thread pool (a slow probe never stalls the kubelet loop).
httpGet: 200-399 is success (HTTPS without verification, as a kubelet does); tcpSocket and grpc:
the port accepts a connection; exec: always success (there is no container to exec into).
"""

from __future__ import annotations

import http.client
import socket
import ssl


def resolve_port(port, container: dict) -> int:
    """A probe's port is a number or the name of one of the container's ports."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"probe port {port!r} is not a declared container port")


def run_probe(probe: dict, pod_ip: str, container: dict) -> bool:
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "httpGet" in probe:
            get = probe["httpGet"]
            host = get.get("host") or pod_ip
            port = resolve_port(get.get("port", 80), container)
            if get.get("scheme", "HTTP").upper() == "HTTPS":
                ctx = ssl.create_default_context()
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                conn.request("GET", get.get("path", "/"), headers=headers)
                return 200 <= conn.getresponse().status < 400
            finally:
                conn.close()
        if "tcpSocket" in probe or "grpc" in probe:
            spec = probe.get("tcpSocket") or probe.get("grpc")
            host = spec.get("host") or pod_ip
            with socket.create_connection((host, resolve_port(spec["port"], container)), timeout=timeout):
                return True
        return True  # exec probes: nothing to exec into
    except (OSError, ValueError, http.client.HTTPException):
        return False
