"""Preemption: a signal only sets a flag; ranks agree at a step boundary, save, and exit.

Saving inside a signal handler can deadlock (a collective half-done on one rank, a lock held by
the interrupted code). So the handler does no I/O: it sets a flag, which the trainer folds into the
all-reduce it does every step anyway; when any rank saw the signal, every rank stops after the
same step, saves a committed checkpoint and exits with EXIT_PREEMPTED, which tells the Slurm batch
script to requeue the job.

Ctrl-C (SIGINT) is the same request from a person: the first one finishes the step, saves and
exits with EXIT_PREEMPTED; a second one, while that is under way, aborts at once (KeyboardInterrupt).
"""

from __future__ import annotations

import signal
from types import FrameType

EXIT_PREEMPTED = 85  # distinct from failures (1), usage errors (2) and bad-step stops (3)
SIGNALS = ("SIGUSR1", "SIGTERM", "SIGINT")

_requested = False
_signal_name = ""


def _handler(signum: int, frame: FrameType | None) -> None:
    global _requested, _signal_name
    if signum == signal.SIGINT and _requested and _signal_name == "SIGINT":
        raise KeyboardInterrupt  # the second Ctrl-C: stop now, without saving
    _requested = True
    _signal_name = signal.Signals(signum).name


def install(names: tuple[str, ...] = SIGNALS) -> None:
    for name in names:
        signal.signal(getattr(signal, name), _handler)


def requested() -> bool:
    return _requested


def signal_name() -> str:
    return _signal_name


class Preempted(RuntimeError):
    """Raised after the checkpoint is committed; the worker turns it into EXIT_PREEMPTED."""
