"""A process's memory: its resident size, its peak (``VmHWM``), and giving freed memory back.

After a big job the allocators keep freed pages for reuse; ``release`` hands them back to the
system (glibc ``malloc_trim`` and Arrow's memory pool), so a function replica returns to its
resting size instead of keeping its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc

__all__ = ["peak_rss_mb", "release", "rss_mb"]


def _status_kb(field: str, pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size now, in MiB."""
    return _status_kb("VmRSS", pid) / 1024


def peak_rss_mb(pid: int | str = "self") -> float:
    """The peak resident set size since the process started (or its peak was reset), in MiB."""
    return _status_kb("VmHWM", pid) / 1024


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def release() -> None:
    """Give freed memory back to the system (garbage, Arrow's pool, glibc's free lists)."""
    gc.collect()
    try:
        import pyarrow

        pyarrow.default_memory_pool().release_unused()
    except ImportError:
        pass
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
