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


def environment() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    env = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
           "cpu cores": str(os.cpu_count())}
    try:
        import torch

        if torch.cuda.is_available():
            env["gpus"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except ImportError:
        pass
    for p in PACKAGES:
        env[p] = version(p) or "not installed"
    return env
