"""CPU allocator settings for training and benchmarks on Linux.

glibc serves every allocation above its mmap threshold (128 KiB, raised up to 32 MiB as large blocks are freed)
with a fresh `mmap` and gives it back with `munmap` when it is freed, so each training step's large activations
are new pages that the kernel must fault in and zero again. A MoE layer allocates more of them than a dense one
(its tokens * top_k expert rows): at the published widths and 4096 tokens this made a MoE layer's training step
about 1.5x slower (`benchmarks/bench_moe.py --allocator` measures it). `keep_freed_memory` tells glibc to serve
large blocks from its heap and not to return freed memory to the system, so the next step reuses pages that are
already mapped. Resident memory then stays at the run's peak, which a training process reaches anyway.
PyTorch's own CPU launcher (`torch.backends.xeon.run_cpu`) gets the same effect by preloading jemalloc or
tcmalloc; this needs neither.
"""

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h


def keep_freed_memory() -> bool:
    """Serve large allocations from glibc's heap and keep freed memory for reuse. Returns whether it applied (it does
    not on other platforms or C libraries). Call it before the first large tensor is allocated."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    if applied:
        logger.info("glibc keeps freed memory for reuse (no mmap for large blocks, no trimming)")
    return applied
