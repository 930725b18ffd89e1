"""Curriculum stages and their ends: the monitors of `until:` and each stage's own overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config.base import Check, key_path
from pipeline.config.training import DistillConfig, SamplingConfig, SurgeryConfig


@dataclass
class MonitorConfig:
    """One convergence condition. plateau/overfitting watch dev losses (needs train.eval_every)."""

    monitor: Literal["plateau", "overfitting", "budget"]
    directions: list[str] = field(default_factory=lambda: ["all"])  # names, group:NAME or all
    patience: int = 3  # evaluations
    min_delta: float = 0.01  # plateau: smallest improvement that counts
    relative: bool = True  # plateau: min_delta is a fraction of the reference value
    smoothing: float = 0.0  # plateau: EMA factor on the metric (0: none)
    steps: int | None = None  # budget
    tokens: int | None = None  # budget: target tokens trained in the stage
    minutes: float | None = None  # budget: wall-clock minutes in the stage

    def check(self, path: str) -> Check:
        out: Check = []
        budget = [k for k in ("steps", "tokens", "minutes") if getattr(self, k) is not None]
        if self.monitor == "budget" and not budget:
            out.append((key_path(path, "monitor"), "a budget needs steps, tokens or minutes"))
        if self.monitor != "budget" and budget:
            out.append((key_path(path, budget[0]), f"only a budget monitor takes {budget[0]}"))
        if self.patience < 1:
            out.append((key_path(path, "patience"), "must be >= 1"))
        if not 0 <= self.smoothing < 1:
            out.append((key_path(path, "smoothing"), "must be in [0, 1)"))
        if self.min_delta < 0:
            out.append((key_path(path, "min_delta"), "must be >= 0"))
        return out


@dataclass
class UntilConfig:
    """When a stage ends: at max_steps, or once min_steps are done and the monitors agree. The
    fractions say the same relative to train.max_steps, so a recipe keeps its meaning when the
    run's budget changes (--set train.max_steps=...)."""

    max_steps: int | None = None  # None: until train.max_steps
    min_steps: int = 0
    max_fraction: float | None = None  # at most this share of train.max_steps (instead of max_steps)
    min_fraction: float | None = None  # monitors may end the stage only after this share (instead of min_steps)
    any: list[MonitorConfig] = field(default_factory=list)  # ends when one of these fires
    all: list[MonitorConfig] = field(default_factory=list)  # ends when every one has fired

    def check(self, path: str) -> Check:
        out: Check = []
        if self.any and self.all:
            out.append((key_path(path, "all"), "use either any: or all:, not both"))
        if self.max_steps is not None and self.max_steps < 1:
            out.append((key_path(path, "max_steps"), "must be >= 1"))
        if self.min_steps < 0:
            out.append((key_path(path, "min_steps"), "must be >= 0"))
        if self.max_steps is not None and self.min_steps > self.max_steps:
            out.append((key_path(path, "min_steps"), f"is above max_steps {self.max_steps}"))
        for name, fixed in (("max_fraction", "max_steps"), ("min_fraction", "min_steps")):
            v = getattr(self, name)
            if v is None:
                continue
            if not 0 < v <= 1:
                out.append((key_path(path, name), "must be in (0, 1]"))
            if getattr(self, fixed):
                out.append((key_path(path, name), f"use either {fixed} or {name}, not both"))
        if self.max_fraction and self.min_fraction and self.min_fraction > self.max_fraction:
            out.append((key_path(path, "min_fraction"), f"is above max_fraction {self.max_fraction}"))
        return out

    def max_for(self, run_steps: int) -> int | None:
        """The stage's own step limit for a run of `run_steps` steps (None: none of its own)."""
        if self.max_fraction is not None:
            return max(1, round(self.max_fraction * run_steps))
        return self.max_steps

    def min_for(self, run_steps: int) -> int:
        if self.min_fraction is not None:
            return round(self.min_fraction * run_steps)
        return self.min_steps

    @property
    def monitors(self) -> list[MonitorConfig]:
        return self.any or self.all


@dataclass
class StageConfig:
    name: str
    directions: list[str] = field(default_factory=lambda: ["all"])  # "eng-fra", "group:hrl", "all"
    sampling: SamplingConfig | None = None  # None: the recipe's top-level sampling
    until: UntilConfig = field(default_factory=UntilConfig)
    optimizer: Literal["continue", "reset"] = "continue"  # Adam moments from the previous stage
    lr_schedule: Literal["continue", "reset"] = "continue"  # reset: a new warm-up and decay
    warmup_steps: int | None = None  # after a reset (default train.warmup_steps)
    surgery: SurgeryConfig | None = None  # None: the recipe's top-level surgery
    distill: DistillConfig | None = None  # None: the recipe's top-level distill
    # The share of train.max_steps kept for this stage: the stages before it end by then at the latest.
    min_share: float = 0.0

    def check(self, path: str) -> Check:
        out: Check = []
        if not 0 <= self.min_share < 1:
            out.append((key_path(path, "min_share"), "must be in [0, 1)"))
        if not self.name or not self.name.replace("-", "_").isidentifier():
            out.append((key_path(path, "name"), f"must be a simple name (letters, digits, _ or -), got {self.name!r}"))
        if not self.directions:
            out.append((key_path(path, "directions"), "must name at least one direction or group"))
        return out
