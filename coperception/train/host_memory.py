"""Keep freed host memory in the process for reuse (CPU training: ``train.keep_host_memory``).

A CPU training step allocates and frees dozens of 50-300 MB activation tensors. glibc's malloc
serves every block above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and returns it
with ``munmap`` when freed, so the next step touches brand-new pages: on the bench_train
configuration that is ~47,000 page faults and ~2.8 s of kernel time per 9 s step (2 cores).
:func:`keep_freed_memory` tells malloc to serve large blocks from its heap and to give the
heap's top back only beyond 2 GB free, so later steps reuse the same pages: kernel time per step
2.78 -> 0.27 s, step 9.0 -> 7.1 s, at the cost of a higher resident size (peak 4.3 -> 5.7 GB
there) kept until the process exits (benchmarks/RESULTS.md). PyTorch's CPU tuning advice gets
the same from swapping in jemalloc/tcmalloc; this does it with the allocator already loaded.

The setting is process-wide and one-way; only glibc (Linux) is supported, elsewhere it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # an int: mallopt takes a C int

_applied = False


def keep_freed_memory() -> bool:
    """Serve large allocations from the malloc heap and keep freed memory (see the module doc).

    Returns True when the setting is in force (now or from an earlier call), False where the C
    library is not glibc or refused it.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(_M_MMAP_MAX, 0) != 1 or mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) != 1:
        log.warning("mallopt refused the heap settings; large CPU tensors keep going through mmap")
        return False
    _applied = True
    return True
