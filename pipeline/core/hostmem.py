"""glibc malloc settings for training processes: keep freed memory for the next step."""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
OPT_OUT = "MMTC_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Serve every allocation from the heap and never hand its free top back to the kernel.

    glibc maps allocations above its mmap threshold (128 KiB, adapting up to 32 MiB) afresh and
    trims the heap's free top; a training step frees and reallocates the same few hundred MB of
    activations, logits and gradients every step, so each step page-faults them in again: on the
    2-core CPU, 50,000 faults and 8% of a `tiny` step. Without mmap or trimming the process stays at
    its peak heap, which the next step needs anyway. True when applied; `MMTC_KEEP_FREED_MEMORY=0`
    opts out, and elsewhere than glibc it does nothing.
    """
    if os.environ.get(OPT_OUT, "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallopt"):
        return False
    no_mmap = libc.mallopt(M_MMAP_MAX, 0)
    no_trim = libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1))
    return bool(no_mmap and no_trim)
