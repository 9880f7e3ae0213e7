"""The bearer key that guards the HTTP API: given directly, or read from a file that may change.

In a pod the key comes from a mounted Secret (`--api-key-file`); kubelet replaces the file in place
when the Secret changes (a symlink swap), so the file's identity is checked again at most every
`recheck_s` and the key re-read when it changed: a rotated key takes effect without a restart. If the
file disappears or turns empty later, the last good key stays in force (failing open would expose
the model). Keys are compared as UTF-8 bytes in constant time, so any header a client sends — also
a non-ASCII one — is simply a wrong key, never an error.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from pathlib import Path

from dynasparse_worker.errors import UserError

log = logging.getLogger(__name__)


class ApiKey:
    """The key in force; `None` (no key configured) lets every request through."""

    def __init__(self, key: str | None = None, path: Path | str | None = None,
                 recheck_s: float = 1.0):
        if key and path:
            raise UserError("give the API key once: --api-key or --api-key-file, not both")
        self._key = (key or "").encode() or None
        self._path = Path(path) if path else None
        self._recheck_s = recheck_s
        self._identity: tuple | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()
        if self._path is not None:
            self._reload(first=True)

    @property
    def required(self) -> bool:
        self._maybe_reload()
        return self._key is not None

    def accepts(self, authorization: str | None) -> bool:
        """Whether an `Authorization` header value carries the key (always, without a key)."""
        self._maybe_reload()
        if self._key is None:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        # Starlette decodes header bytes as latin-1, so this round trip gives the sent bytes back.
        sent = token.strip().encode("latin-1", errors="replace")
        return scheme.lower() == "bearer" and hmac.compare_digest(sent, self._key)

    def _maybe_reload(self) -> None:
        if self._path is None or time.monotonic() - self._checked_at < self._recheck_s:
            return
        with self._lock:
            if time.monotonic() - self._checked_at >= self._recheck_s:
                self._reload(first=False)

    def _reload(self, first: bool) -> None:
        assert self._path is not None
        self._checked_at = time.monotonic()
        try:
            st = os.stat(self._path)  # follows kubelet's ..data symlink to the current file
            identity = (st.st_ino, st.st_mtime_ns, st.st_size)
            if identity == self._identity:
                return
            key = self._path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            if first:
                raise UserError(f"cannot read the API key file {self._path} ({exc}): mount the "
                                "Secret there or fix --api-key-file") from None
            log.warning("cannot re-read the API key file %s (%s): keeping the current key",
                        self._path, exc)
            return
        if not key:
            if first:
                raise UserError(f"the API key file {self._path} is empty: put the key in it")
            log.warning("the API key file %s is empty now: keeping the current key", self._path)
            return
        if not first and key.encode() != self._key:
            log.info("the API key file %s changed: using the new key", self._path)
        self._identity, self._key = identity, key.encode()
