"""Peak memory of one measured block of work inside a long-lived process.

``ru_maxrss`` only ever grows, so a later, smaller workload would report the peak
of an earlier, bigger one. On Linux the high-water mark of the resident set
(``VmHWM`` in ``/proc/self/status``) can be reset to the current RSS by writing
``5`` to ``/proc/self/clear_refs``; :class:`PeakMemory` does that before each
block (after giving freed heap pages back to the system with glibc's
``malloc_trim``, so memory freed by the previous block does not count) and
reads ``VmHWM`` afterwards. Where that is impossible it falls back to the
process-wide ``ru_maxrss`` and says so (``scope = "process"``).

On CUDA the peak of allocated device memory is reset and read the same way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc()


def trim_heap() -> None:
    """Collect garbage and return free heap pages to the OS (glibc only)."""
    gc.collect()
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text(encoding="ascii").splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mib() -> float | None:
    """Current resident set size, MiB (None where ``/proc`` is missing)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024.0


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


def process_peak_rss_mib() -> float:
    """Peak resident set size of this whole process so far (``ru_maxrss``), MiB."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / (1024.0 * 1024.0) if sys.platform == "darwin" else value / 1024.0


@dataclass
class MemoryReading:
    """Peak memory of one measured block."""

    #: peak resident set size during the block, MiB (the whole process: model included)
    peak_rss_mib: float
    #: resident set size when the block started, MiB (None where unknown)
    start_rss_mib: float | None
    #: "block" when the high-water mark was reset for this block, else "process"
    scope: str
    #: peak allocated CUDA memory during the block, MiB (None off CUDA)
    cuda_peak_mib: float | None = None


class PeakMemory:
    """Context manager measuring the peak memory of the block it wraps::

        with PeakMemory(device) as probe:
            work()
        probe.reading.peak_rss_mib
    """

    def __init__(self, device: Any = None) -> None:
        self.device = device
        self.reading: MemoryReading | None = None
        self._start: float | None = None
        self._scope = "process"

    def _cuda(self) -> Any:
        if self.device is None or getattr(self.device, "type", str(self.device)) != "cuda":
            return None
        import torch

        return torch.cuda

    def __enter__(self) -> "PeakMemory":
        trim_heap()
        cuda = self._cuda()
        if cuda is not None:
            cuda.synchronize(self.device)
            cuda.empty_cache()
            cuda.reset_peak_memory_stats(self.device)
        self._scope = "block" if _reset_hwm() and _status_kib("VmHWM") is not None else "process"
        self._start = rss_mib()
        return self

    def __exit__(self, *exc: object) -> None:
        cuda = self._cuda()
        cuda_peak = None
        if cuda is not None:
            cuda.synchronize(self.device)
            cuda_peak = cuda.max_memory_allocated(self.device) / 2**20
        hwm = _status_kib("VmHWM") if self._scope == "block" else None
        peak = hwm / 1024.0 if hwm is not None else process_peak_rss_mib()
        self.reading = MemoryReading(peak_rss_mib=peak, start_rss_mib=self._start,
                                     scope=self._scope if hwm is not None else "process",
                                     cuda_peak_mib=cuda_peak)
