"""Process memory: keep freed blocks for reuse during a prediction, and the peak resident size.

A CPU prediction frees and allocates the same large buffers for every layer of every window. By
default glibc hands each block above 32 MB back to the kernel when it is freed, so every new one
costs page faults on fresh, zeroed pages (about a third of the time of a 512 x 512 window). While
`reuse_freed_memory()` is active large blocks come from the heap and freed ones stay there for the
next layer; on exit glibc's defaults come back and the free memory is returned to the kernel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_GLIBC_MMAP_MAX = 65536
_GLIBC_TRIM_THRESHOLD = 128 * 1024
_KEPT_BYTES = 2**31 - 1  # mallopt takes a C int: the largest trim threshold it can set

_lock = threading.Lock()
_active = 0


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has mallopt and malloc_trim), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def reuse_supported() -> bool:
    """Whether this process's allocator can be told to keep freed memory (Linux with glibc)."""
    return _glibc() is not None


@contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """While active, large blocks come from the heap and freed memory stays for reuse.

    Yields whether the setting took effect. Nested and concurrent uses share one setting; the last
    to leave restores glibc's defaults and returns free heap memory to the kernel.
    """
    global _active
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    with _lock:
        if _active == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, _KEPT_BYTES)
        _active += 1
    try:
        yield True
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD)
                libc.malloc_trim(0)


def peak_rss_bytes() -> int | None:
    """Largest resident set size of this process so far, in bytes (None where unknown: Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024
