"""A thin JSON client of the Kubernetes API: dicts in, dicts out, one urllib3 pool per instance.

Used by the process kubelet, `cluster.up()` readiness checks, `nodeops` and tests. Deliberately not
the generated `kubernetes` client: the kubelet works on raw objects (pod specs as dicts, strategic
merge patches of status), where model classes only get in the way. Thread-safe.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlencode

import urllib3

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class ApiError(Exception):
    """A non-2xx answer; `status` is the HTTP code, `reason` the Status reason (NotFound, ...)."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message


class Api:
    def __init__(self, server: str, ca_file: Path, cert_file: Path | None = None,
                 key_file: Path | None = None, token: str | None = None, timeout: float = 30.0):
        self.server = server.rstrip("/")
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._pool = urllib3.PoolManager(
            ca_certs=str(ca_file), cert_reqs="CERT_REQUIRED",
            cert_file=str(cert_file) if cert_file else None,
            key_file=str(key_file) if key_file else None, maxsize=8,
        )
        self.timeout = timeout

    @classmethod
    def for_cluster(cls, cfg, client: str = "admin") -> "Api":
        """An Api authenticated with one of the cluster's client certificates (see pki.CLIENTS)."""
        return cls(cfg.server, cfg.pki / "ca.crt", cfg.pki / f"{client}.crt", cfg.pki / f"{client}.key")

    def _url(self, path: str, params: dict[str, Any] | None) -> str:
        query = f"?{urlencode({k: v for k, v in params.items() if v is not None})}" if params else ""
        return f"{self.server}{path}{query}"

    def request(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None,
                content_type: str = "application/json", timeout: float | None = None) -> dict:
        headers = dict(self._headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        resp = self._pool.request(method, self._url(path, params), body=data, headers=headers,
                                  timeout=timeout or self.timeout, retries=False)
        payload = resp.data.decode() if resp.data else ""
        if resp.status >= 300:
            try:
                status = json.loads(payload)
                raise ApiError(resp.status, status.get("reason", ""), status.get("message", payload))
            except ValueError:
                raise ApiError(resp.status, "", payload[:500]) from None
        if not payload:
            return {}
        if "json" not in resp.headers.get("Content-Type", ""):
            return {"text": payload}  # /readyz, /healthz and friends answer in plain text
        return json.loads(payload)

    def get(self, path: str, **params) -> dict:
        return self.request("GET", path, params=params or None)

    def post(self, path: str, body: dict, **params) -> dict:
        return self.request("POST", path, body, params=params or None)

    def put(self, path: str, body: dict) -> dict:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: Any, content_type: str = STRATEGIC) -> dict:
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str, body: dict | None = None, **params) -> dict:
        return self.request("DELETE", path, body, params=params or None)

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    def watch(self, path: str, timeout_seconds: int = 60, **params) -> Iterator[dict]:
        """Yield watch events ({type, object}) until the server closes the stream."""
        query = {"watch": "true", "timeoutSeconds": timeout_seconds, "allowWatchBookmarks": "true",
                 **params}
        resp = self._pool.request("GET", self._url(path, query), headers=self._headers,
                                  preload_content=False, retries=False,
                                  timeout=urllib3.Timeout(connect=5, read=timeout_seconds + 10))
        try:
            if resp.status >= 300:
                raise ApiError(resp.status, "", resp.read().decode(errors="replace")[:500])
            buffer = b""
            for chunk in resp.stream(4096):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            resp.release_conn()
