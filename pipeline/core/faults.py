"""Fault injection for tests of exactness and safety: `MMTC_FAULT=kind@step[,kind@step...]`.

kinds: `kill` (SIGKILL after the step), `kill_in_save` (SIGKILL after DeepSpeed wrote the tag but
before it is committed), `nan_loss` (the loss of rank 0's first micro-batch becomes NaN),
`save_error` (the save raises OSError, as a full disk would), `sigusr1` (the last rank alone sends
itself SIGUSR1 during the step, as a preemption warning would), `sigint` (rank 0 sends itself
SIGINT during the step, as Ctrl-C would; `sigint2`: twice, as an impatient Ctrl-C). Unset in normal runs: no effect.
"""

from __future__ import annotations

import os
import signal


def _parse(spec: str) -> set[tuple[str, int]]:
    out = set()
    for item in filter(None, (x.strip() for x in spec.split(","))):
        kind, _, step = item.partition("@")
        out.add((kind, int(step)))
    return out


_FAULTS = _parse(os.environ.get("MMTC_FAULT", ""))


def armed(kind: str, step: int) -> bool:
    return (kind, step) in _FAULTS


def kill_if(kind: str, step: int) -> None:
    if armed(kind, step):
        os.kill(os.getpid(), signal.SIGKILL)


def signal_if(step: int, rank: int, world: int) -> None:
    if armed("sigusr1", step) and rank == world - 1:
        os.kill(os.getpid(), signal.SIGUSR1)
    for _ in range(2 if armed("sigint2", step) else 1 if armed("sigint", step) else 0):
        if rank == 0:
            os.kill(os.getpid(), signal.SIGINT)
