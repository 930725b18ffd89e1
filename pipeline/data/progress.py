"""A progress bar for long preparation, written as log lines (a run's log is a file, not a TTY)."""

from __future__ import annotations

import time
from collections.abc import Callable

WIDTH = 24


class Progress:
    """`tick(n)` after each n units; a line at most every `every_s` seconds, and one at the end
    when any line was written. Nothing for work that finishes within `every_s`."""

    def __init__(self, label: str, total: int, log: Callable[[str], None], unit: str = "pairs",
                 every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total, self.log, self.unit, self.every_s, self.clock = label, total, log, unit, every_s, clock
        self.done, self.start = 0, clock()
        self.last = self.start
        self.shown = -1  # `done` at the last line written (-1: none yet)

    def tick(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last, self.shown = now, self.done
            self.log(self.line(now))

    def line(self, now: float) -> str:
        frac = min(1.0, self.done / self.total) if self.total else 1.0
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate and self.done < self.total else 0.0
        bar = "#" * round(frac * WIDTH) + "-" * (WIDTH - round(frac * WIDTH))
        return (f"{self.label} [{bar}] {frac:4.0%} {_si(self.done)}/{_si(self.total)} {self.unit}, "
                f"{_si(rate)} {self.unit}/s, {'ETA ' + _clock(eta) if eta else _clock(elapsed)}")

    def close(self) -> None:
        if 0 <= self.shown < self.done:
            self.shown = self.done
            self.log(self.line(self.clock()))


def _si(x: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if x >= div:
            return f"{x / div:.1f}{suffix}"
    return f"{x:.0f}"


def _clock(s: float) -> str:
    m, sec = divmod(int(s), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{sec:02d}s"
