"""Learning-rate schedules: pure functions of the optimizer step, wrapped for DeepSpeed."""

from __future__ import annotations

import math
from typing import Any

from pipeline.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig, total_steps: int, warmup: int | None = None) -> float:
    """LR for the `step`-th optimizer update (0-based) of a schedule that spans `total_steps`."""
    s = step + 1
    warm = cfg.warmup_steps if warmup is None else warmup
    if warm and s <= warm:
        return cfg.lr * s / warm
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "inverse_sqrt":
        return max(cfg.min_lr, cfg.lr * math.sqrt(max(warm, 1) / s))
    span = max(1, total_steps - warm)
    progress = min(1.0, (s - warm) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


class StepSchedule:
    """The scheduler DeepSpeed steps after each optimizer update; its state is one counter.

    `origin` is the global step where the schedule (re)started, so a stage that resets its
    schedule gets a fresh warm-up while the counter stays global.
    """

    def __init__(self, optimizer: Any, cfg: TrainConfig, total_steps: int, origin: int = 0) -> None:
        self.optimizer = optimizer
        self.cfg, self.total_steps = cfg, total_steps
        self.step_count = origin
        self.origin = origin
        self.warmup: int | None = None  # None: cfg.warmup_steps
        self._apply()

    def lr(self) -> float:
        return lr_at(self.step_count - self.origin, self.cfg, self.total_steps, self.warmup)

    def _apply(self) -> None:
        lr = self.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, *args: Any, **kwargs: Any) -> None:
        self.step_count += 1
        self._apply()

    def restart(self, origin: int, total_steps: int, warmup: int | None = None) -> None:
        self.origin, self.total_steps, self.warmup = origin, total_steps, warmup
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [self.lr()]

    def get_lr(self) -> list[float]:
        return [self.lr()]

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "origin": self.origin, "total_steps": self.total_steps,
                "warmup": self.warmup}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self.origin = int(state["origin"])
        self.total_steps = int(state["total_steps"])
        self.warmup = state.get("warmup")
        self._apply()
