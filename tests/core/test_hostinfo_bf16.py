"""The bf16-on-a-CPU-without-bf16 warning: from the CPU's flags, never on a GPU or in fp32."""

from __future__ import annotations

from pipeline.core import hostinfo


def test_bf16_on_a_cpu_without_bf16_instructions_is_warned_about(monkeypatch):
    monkeypatch.setattr(hostinfo, "cpu_flags", lambda: {"sse2", "avx2", "fma"})
    note = hostinfo.slow_cpu_bf16_note("bf16", on_gpu=False)
    assert note is not None and "--set train.precision=fp32" in note
    assert hostinfo.slow_cpu_bf16_note("amp_bf16", on_gpu=False) is not None
    assert hostinfo.slow_cpu_bf16_note("fp32", on_gpu=False) is None
    assert hostinfo.slow_cpu_bf16_note("bf16", on_gpu=True) is None
    monkeypatch.setattr(hostinfo, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert hostinfo.slow_cpu_bf16_note("bf16", on_gpu=False) is None
