"""Tie a child's life to its launcher's (Linux PR_SET_PDEATHSIG)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> None:
    """Ask the kernel to SIGTERM this process when its parent exits; exit now if the parent is
    already gone (the race between fork and this call). No-op off Linux."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(0)


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
TLS_BUFFER_BYTES = 256 * 1024  # asyncio's TLS transport reads through one buffer of this size
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's default starting threshold, held there


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Have glibc serve every allocation of `threshold` bytes or more by its own mapping, given
    back to the system when freed; True if it took.

    By default glibc raises that threshold to the size of the largest mapped block freed so far.
    asyncio's TLS transport allocates a TLS_BUFFER_BYTES buffer per connection, so after the
    first link closed, every later buffer came from the heap instead, and the heap cannot
    shrink below its highest live block: a governance unit redialling its neighbours after
    faults grew by megabytes (`bench/tls_heap.py` measures it). Setting the threshold also
    turns that adjustment off (mallopt(3)). No-op off glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
