"""Temperature schedules: τ(step) moves between two values; p ∝ D^(1/τ(step)).

τ is a pure function of the stage-local step, so nothing but the step needs saving.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pipeline.balance.base import Sampler, register
from pipeline.core.mixing import temperature_probs


@dataclass
class ScheduleParams:
    start: float = 5.0
    end: float = 1.0
    schedule: Literal["linear", "cosine", "step", "exponential"] = "linear"
    steps: int | None = None  # span of the schedule; default: the stage's length
    at: float = 0.5  # step schedule: the fraction of the span where τ jumps from start to end
    horizon: int = 0  # filled in from the stage

    def check(self, path: str) -> list[tuple[str, str]]:
        out = [(f"{path}.{k}", "must be > 0") for k in ("start", "end") if getattr(self, k) <= 0]
        if not 0 <= self.at <= 1:
            out.append((f"{path}.at", "must be in [0, 1]"))
        if self.steps is not None and self.steps < 1:
            out.append((f"{path}.steps", "must be >= 1"))
        return out


def tau_at(step: int, p: ScheduleParams) -> float:
    span = p.steps or p.horizon
    x = 1.0 if span <= 0 else min(1.0, max(0.0, step / span))
    if p.schedule == "linear":
        return p.start + (p.end - p.start) * x
    if p.schedule == "cosine":
        return p.end + (p.start - p.end) * 0.5 * (1 + math.cos(math.pi * x))
    if p.schedule == "exponential":
        return p.start * (p.end / p.start) ** x
    return p.start if x < p.at else p.end


class TemperatureSchedule(Sampler):
    kind = "temperature_schedule"
    dynamic = True

    def __init__(self, names: Any, sizes: Any, params: ScheduleParams) -> None:
        super().__init__(names, sizes)
        self.params = params
        self._tau = params.start

    def probabilities(self, step: int) -> np.ndarray:
        self._tau = tau_at(step, self.params)
        return temperature_probs(self.sizes, self._tau)

    def log_values(self) -> dict[str, Any]:
        return {"tau": round(self._tau, 6)}


register("temperature_schedule", ScheduleParams, TemperatureSchedule)
