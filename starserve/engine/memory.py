"""Allocator setting for engine processes.

A KV snapshot of 1k tokens is ~45 MB (float32). glibc serves such blocks with a fresh `mmap` and
returns them with `munmap` on free, so every export pays ~11k page faults (about 35 ms here,
more than the copy itself). Raising the mmap and trim thresholds keeps freed memory in the heap
for reuse. The setting is per process (like choosing tcmalloc or jemalloc), so the engine applies
it once when `EngineConfig.keep_freed_memory` is on.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(threshold_bytes: int = 2**30) -> bool:
    """Serve blocks below `threshold_bytes` from the heap and never trim it; False if not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    )
