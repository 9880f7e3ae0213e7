"""The API key from a file, as a mounted Secret provides it: read at start, re-read when kubelet
swaps it, kept when the file goes missing; /metrics guarded only when asked; probes always open."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from dynasparse_worker.errors import UserError
from dynasparse_worker.server.auth import ApiKey

pytestmark = pytest.mark.slow


def mount_secret(directory: Path, key: str) -> Path:
    """Write `key` the way kubelet updates a Secret volume: a new timestamped directory, then an
    atomic swap of the `..data` symlink that the visible file points through."""
    stamp = directory / f"..{time.monotonic_ns()}"
    stamp.mkdir()
    (stamp / "api-key").write_text(key + "\n")
    tmp = directory / "..data_tmp"
    tmp.symlink_to(stamp.name)
    os.replace(tmp, directory / "..data")
    visible = directory / "api-key"
    if not visible.is_symlink():
        visible.symlink_to("..data/api-key")
    return visible


def models(worker, key: str | None) -> int:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{worker.url}/v1/models", headers=headers).status_code


def test_a_key_file_is_read_at_start_and_reread_when_the_secret_changes(start_worker, tmp_path):
    path = mount_secret(tmp_path, "first-key")
    with start_worker(api_key_file=path) as w:
        assert models(w, "first-key") == 200 and models(w, None) == 401
        mount_secret(tmp_path, "second-key")
        deadline = time.monotonic() + 5
        while models(w, "second-key") != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert models(w, "second-key") == 200 and models(w, "first-key") == 401
        assert httpx.get(f"{w.url}/healthz").status_code == 200
        assert httpx.get(f"{w.url}/readyz").status_code == 200
        assert httpx.get(f"{w.url}/metrics").status_code == 200  # open unless --metrics-auth


def test_a_key_file_that_disappears_keeps_the_last_key(tmp_path):
    path = tmp_path / "key"
    path.write_text("kept\n")
    key = ApiKey(path=path, recheck_s=0.0)
    path.unlink()
    assert key.accepts("Bearer kept") and not key.accepts("Bearer other") and not key.accepts(None)


def test_a_missing_or_empty_key_file_stops_the_start_with_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        ApiKey(path=tmp_path / "absent")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(UserError, match="empty"):
        ApiKey(path=tmp_path / "empty")
    with pytest.raises(UserError, match="not both"):
        ApiKey("k", tmp_path / "empty")


def test_metrics_require_the_key_when_metrics_auth_is_on(start_worker):
    with start_worker(api_key="sekret", metrics_auth=True) as w:
        assert httpx.get(f"{w.url}/metrics").status_code == 401
        scraped = httpx.get(f"{w.url}/metrics", headers={"authorization": "Bearer sekret"})
        assert scraped.status_code == 200 and "dynasparse_budget" in scraped.text
        assert httpx.get(f"{w.url}/healthz").status_code == 200
