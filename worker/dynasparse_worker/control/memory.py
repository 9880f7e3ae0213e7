"""Accelerator memory for reports, metrics and the fast loop.

On an NVIDIA GPU, NVML (`nvidia-ml-py`) gives used/total bytes of the device and `source` "nvml".
Without one, a clearly labelled fallback: this process's resident set size against the cgroup's
memory limit (`fallback:process-rss/cgroup`) or the host's total memory (`fallback:process-rss/host`).
Called by control/supervisor.py; `MemoryProbe` keeps the NVML handle (no module-global state).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MemoryReading:
    used_bytes: int
    total_bytes: int
    source: str

    @property
    def fraction(self) -> float:
        return self.used_bytes / self.total_bytes if self.total_bytes else 0.0


class MemoryProbe:
    """Reads memory of GPU `device_index` through NVML, or the fallback when NVML is unavailable."""

    def __init__(self, device_index: int = 0, use_nvml: bool = True):
        self._handle = None
        self._nvml = None
        if use_nvml:
            self._handle = self._open_nvml(device_index)

    def _open_nvml(self, device_index: int):
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        except Exception:  # noqa: BLE001 - no driver, no GPU, no library: all mean "fallback"
            return None
        self._nvml = pynvml
        return handle

    @property
    def source(self) -> str:
        return "nvml" if self._handle is not None else fallback_reading().source

    def read(self) -> MemoryReading:
        if self._handle is not None:
            try:
                info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
                return MemoryReading(int(info.used), int(info.total), "nvml")
            except Exception:  # noqa: BLE001 - a GPU lost mid-run: report the fallback
                pass
        return fallback_reading()

    def close(self) -> None:
        if self._handle is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
            self._handle = None


def process_rss_bytes() -> int:
    """Resident set size of this process, from /proc (0 where /proc is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def cgroup_limit_bytes() -> int | None:
    """The cgroup v2 (or v1) memory limit, None when unlimited or unknown."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        if 0 < value < (1 << 60):  # v1 writes a huge number for "unlimited"
            return value
    return None


def host_total_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def fallback_reading() -> MemoryReading:
    limit = cgroup_limit_bytes()
    if limit is not None:
        return MemoryReading(process_rss_bytes(), limit, "fallback:process-rss/cgroup")
    return MemoryReading(process_rss_bytes(), host_total_bytes(), "fallback:process-rss/host")
