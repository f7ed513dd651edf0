"""The malloc tuning gradsweep's task applies to its own process."""

from __future__ import annotations

import platform
import subprocess
import sys

from gradsweep.allocator import keep_freed_memory


def test_glibc_accepts_the_settings_once_per_process() -> None:
    applied = keep_freed_memory()
    assert applied is keep_freed_memory()
    assert applied == (platform.libc_ver()[0] == "glibc")


def test_a_freed_large_block_is_reused_instead_of_mapped_again() -> None:
    """After the call, freeing and reallocating 8 MiB keeps the heap top (no munmap/mmap)."""
    script = """
import ctypes, sys
from gradsweep.allocator import keep_freed_memory
if not keep_freed_memory():
    sys.exit(3)
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
first = libc.malloc(8 << 20)
libc.free(first)
second = libc.malloc(8 << 20)
print(first == second)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if result.returncode == 3:
        return  # no glibc: nothing to tune
    assert result.stdout.strip() == "True", result.stderr
