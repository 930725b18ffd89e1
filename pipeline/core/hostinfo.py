"""The machine and package versions a run trained on (run.json) or a report was made on."""

from __future__ import annotations

import contextlib
import os
import platform
from importlib import metadata
from pathlib import Path

PACKAGES = ("mmt-curriculum", "torch", "deepspeed", "sacrebleu", "sentencepiece", "numpy", "matplotlib")


def version(package: str) -> str | None:
    """From package metadata: importing DeepSpeed only to print its version would cost seconds."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, which Slurm's task/affinity and cgroup
    plugins, taskset and the test suite's parallel workers narrow, not the machine's count; threads
    sized by os.cpu_count() oversubscribe such a share."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    with contextlib.suppress(OSError, StopIteration):
        return set(next(line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                        if line.startswith("flags")))
    return set()


def slow_cpu_bf16_note(precision: str, on_gpu: bool) -> str | None:
    """A warning when bf16 training would run on a CPU without bf16 matrix instructions: torch's
    CPU build then multiplies bf16 matrices in a reference kernel (measured ~40x slower than fp32
    on a 2-core AVX2 EPYC: 62 against 2,500 target tokens per second on the demo model)."""
    if on_gpu or precision not in ("bf16", "amp_bf16"):
        return None
    flags = cpu_flags()
    if not flags or flags & {"avx512_bf16", "amx_bf16"}:
        return None
    return (f"train.precision={precision} on a CPU without avx512_bf16 or amx_bf16: bf16 matrix products run "
            "in a slow reference kernel (about 40x slower than fp32 on such a machine); "
            "--set train.precision=fp32 trains in fp32 instead")


def environment() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    env = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
           "cpu cores": str(os.cpu_count()), "usable cores": str(usable_cores())}
    try:
        import torch

        if torch.cuda.is_available():
            env["gpus"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except ImportError:
        pass
    for p in PACKAGES:
        env[p] = version(p) or "not installed"
    return env
