"""Keep freed host memory in the process, so each training step reuses its gradient buffers.

With glibc's defaults a freed multi-megabyte tensor goes back to the kernel
and the next step's allocation of the same size is mapped and zero-filled
again, which costs a large network's bare CPU step a third of its time
(docs/performance.md). Raising the mmap threshold to its maximum (32 MiB) and turning off
heap trimming makes such tensors come from memory the process already holds.
"""

from __future__ import annotations

import ctypes
import functools

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Tune glibc malloc for this process, once; False (nothing changed) where there is no glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the symbols the process already has: libc's, on Linux
    except (
        OSError,
        AttributeError,
        TypeError,
    ):  # no such symbol (macOS), no dlopen(NULL) (Windows)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        mallopt(_M_TRIM_THRESHOLD, -1)
    )
