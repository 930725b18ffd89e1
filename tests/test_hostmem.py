from __future__ import annotations

import resource

import pytest
import torch

from pipeline.hostmem import keep_freed_memory


def faults_to_fill(mib: int) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(mib * 2**18)  # float32: mib MiB, every page touched
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_memory_is_reused_without_page_faults() -> None:
    assert keep_freed_memory()
    faults_to_fill(64)
    # 64 MiB is 16,384 pages: mapped afresh, each one faults in again. The best of three refills,
    # as the host may reclaim a cold free page now and then (DAMON runs on this machine).
    assert min(faults_to_fill(64) for _ in range(3)) < 1000


def test_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMTC_KEEP_FREED_MEMORY", "0")
    assert not keep_freed_memory()
