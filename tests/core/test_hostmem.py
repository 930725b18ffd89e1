from __future__ import annotations

import ctypes
import resource

import pytest

from pipeline.core.hostmem import keep_freed_memory

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]


def faults_to_fill(mib: int) -> int:
    """Minor page faults to malloc, touch every page of and free `mib` MiB.

    Plain malloc, not a torch tensor: torch asks for 64-byte-aligned memory, and glibc serves an
    aligned request from a chunk a little larger than it, so the first few refills of one size grow
    the heap before a freed chunk fits (seen: five, then none): what this test pins down is glibc's
    behaviour, which `keep_freed_memory` sets.
    """
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(mib << 20)
    assert block
    ctypes.memset(block, 1, mib << 20)
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_memory_is_reused_without_page_faults() -> None:
    assert keep_freed_memory()
    faults_to_fill(64)
    # 64 MiB is 16,384 pages: mapped afresh (glibc's default above 32 MiB), each one faults in
    # again. The best of three refills, as the host may reclaim a cold free page now and then.
    assert min(faults_to_fill(64) for _ in range(3)) < 1000


def test_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMTC_KEEP_FREED_MEMORY", "0")
    assert not keep_freed_memory()
