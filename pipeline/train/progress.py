"""Progress on the console: a bar on a terminal, one plain line per log step otherwise."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    def __init__(self, total_steps: int, enabled: bool) -> None:
        self.total, self.enabled = total_steps, enabled
        self._step, self._busy = 0, 0.0
        self._bar: Any = None

    def start(self, step: int) -> None:
        self._step, self._busy = step, 0.0

    def tick(self, seconds: float) -> None:
        """Time spent in one training step (its batches, forward, backward, update)."""
        self._busy += seconds

    def lap(self, step: int) -> tuple[float, int]:
        """(training seconds, steps) since the previous lap. Only the steps' own time counts:
        dev evaluations, checkpoints and stage-end decoding and reports do not make the
        training look slower (tokens/s) than it is."""
        out = (self._busy, step - self._step)
        self._step, self._busy = step, 0.0
        return out

    def show(self, r: dict[str, Any]) -> None:
        if not self.enabled:
            return
        eta = (self.total - r["step"]) * r["step_s"]
        if sys.stderr.isatty():
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(total=self.total, initial=r["step"], unit="step", dynamic_ncols=True)
            self._bar.update(r["step"] - self._bar.n)
            self._bar.set_postfix_str(f"{r['stage']} loss {r['loss']:.3f} {r['tokens_per_s']:.0f} tok/s")
            return
        print(f"step {r['step']}/{self.total} [{r['stage']}] loss {r['loss']:.3f} nll {r['nll']:.3f} "
              f"lr {r['lr']:.2e} {r['tokens_per_s']:.0f} tok/s eta {eta / 60:.1f} min", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
