"""Convergence monitors: small stateful rules that say when a stage is done, and why.

Each monitor sees an `Observation` after every step (dev and train losses only at evaluation
steps), returns the values that made it fire (or None), and latches: once fired it stays fired,
so `all:` conditions can be met by monitors firing at different times. State round-trips through
`state_dict()`, so a resumed run fires at the same step as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config import MonitorConfig


@dataclass
class Observation:
    step: int  # global optimizer step
    stage_step: int
    stage_tokens: int
    stage_seconds: float
    dev: dict[str, float] | None = None  # dev NLL per direction, at evaluation steps
    train: dict[str, float] | None = None  # train NLL per direction since the previous evaluation


class Monitor:
    kind = "monitor"

    def __init__(self, cfg: MonitorConfig, directions: list[str], eval_only: frozenset[str] = frozenset()) -> None:
        self.cfg, self.directions = cfg, directions
        self.eval_only = eval_only  # directions never trained on (zero-shot)
        self.fired: dict[str, Any] | None = None

    def observe(self, obs: Observation) -> dict[str, Any] | None:
        """Update with `obs`; return the triggering values when this observation fires it."""
        if self.fired is not None:
            return None
        values = self._update(obs)
        if values is not None:
            self.fired = {"step": obs.step, **values}
        return values

    def _update(self, obs: Observation) -> dict[str, Any] | None:
        raise NotImplementedError

    def values(self) -> dict[str, Any]:
        """What the monitor currently tracks (for `mmtc status` and the logs)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "fired": self.fired, **self._state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"monitor state is for {state.get('kind')}, this monitor is {self.kind}")
        self.fired = state["fired"]
        self._load(state)

    def _state(self) -> dict[str, Any]:
        return {}

    def _load(self, state: dict[str, Any]) -> None:
        pass


class Plateau(Monitor):
    """Mean dev loss of the chosen directions, optionally smoothed, improved by less than
    `min_delta` (relative to the reference, or absolute) over the last `patience` evaluations."""

    kind = "plateau"

    def __init__(self, cfg: MonitorConfig, directions: list[str], eval_only: frozenset[str] = frozenset()) -> None:
        super().__init__(cfg, directions, eval_only)
        self.history: list[float] = []
        self.smoothed: float | None = None

    def _update(self, obs: Observation) -> dict[str, Any] | None:
        if obs.dev is None:
            return None
        metric = sum(obs.dev[d] for d in self.directions) / len(self.directions)
        a = self.cfg.smoothing
        self.smoothed = metric if self.smoothed is None else a * self.smoothed + (1 - a) * metric
        self.history.append(self.smoothed)
        p = self.cfg.patience
        self.history = self.history[-(p + 1):]
        if len(self.history) <= p:
            return None
        reference = self.history[0]
        improvement = reference - min(self.history[1:])
        threshold = self.cfg.min_delta * abs(reference) if self.cfg.relative else self.cfg.min_delta
        if improvement < threshold:
            return {"metric": round(self.smoothed, 6), "reference": round(reference, 6),
                    "improvement": round(improvement, 6), "threshold": round(threshold, 6),
                    "evaluations": p, "directions": self.directions}
        return None

    def values(self) -> dict[str, Any]:
        return {"smoothed_dev_loss": self.smoothed, "window": [round(h, 5) for h in self.history]}

    def _state(self) -> dict[str, Any]:
        return {"history": list(self.history), "smoothed": self.smoothed}

    def _load(self, state: dict[str, Any]) -> None:
        self.history, self.smoothed = list(state["history"]), state["smoothed"]


class Overfitting(Monitor):
    """A direction's dev loss rose at each of the last `patience` evaluations while its training
    loss fell over the same window: the low-resource failure that motivates curricula. An eval-only
    (zero-shot) direction has no training loss of its own: the mean of the trained directions'
    stands for it (the model fits its training data while the zero-shot direction gets worse)."""

    kind = "overfitting"

    def __init__(self, cfg: MonitorConfig, directions: list[str], eval_only: frozenset[str] = frozenset()) -> None:
        super().__init__(cfg, directions, eval_only)
        self.dev: dict[str, list[float]] = {d: [] for d in directions}
        self.train: dict[str, list[float]] = {d: [] for d in directions}

    def _update(self, obs: Observation) -> dict[str, Any] | None:
        if obs.dev is None or obs.train is None:
            return None
        p = self.cfg.patience
        for d in self.directions:
            if d in self.eval_only and obs.train:
                train_loss = sum(obs.train.values()) / len(obs.train)
            elif d in obs.train:
                train_loss = obs.train[d]
            else:  # not trained in this interval: no evidence either way
                continue
            self.dev[d] = (self.dev[d] + [obs.dev[d]])[-(p + 1):]
            self.train[d] = (self.train[d] + [train_loss])[-(p + 1):]
            dev, train = self.dev[d], self.train[d]
            if len(dev) <= p:
                continue
            rising = all(b > a for a, b in zip(dev, dev[1:]))
            if rising and train[-1] < train[0]:
                return {"direction": d, "dev_loss": [round(x, 5) for x in dev],
                        "train_loss": [round(x, 5) for x in train], "evaluations": p}
        return None

    def values(self) -> dict[str, Any]:
        return {"dev_loss": {d: [round(x, 5) for x in v] for d, v in self.dev.items()}}

    def _state(self) -> dict[str, Any]:
        return {"dev": {k: list(v) for k, v in self.dev.items()}, "train": {k: list(v) for k, v in self.train.items()}}

    def _load(self, state: dict[str, Any]) -> None:
        self.dev = {k: list(v) for k, v in state["dev"].items()}
        self.train = {k: list(v) for k, v in state["train"].items()}


class Budget(Monitor):
    """The stage has used its steps, target tokens or wall-clock minutes."""

    kind = "budget"

    def _update(self, obs: Observation) -> dict[str, Any] | None:
        c = self.cfg
        if c.steps is not None and obs.stage_step >= c.steps:
            return {"budget": "steps", "used": obs.stage_step, "limit": c.steps}
        if c.tokens is not None and obs.stage_tokens >= c.tokens:
            return {"budget": "tokens", "used": obs.stage_tokens, "limit": c.tokens}
        if c.minutes is not None and obs.stage_seconds >= 60 * c.minutes:
            return {"budget": "minutes", "used": round(obs.stage_seconds / 60, 3), "limit": c.minutes}
        return None


MONITORS: dict[str, type[Monitor]] = {"plateau": Plateau, "overfitting": Overfitting, "budget": Budget}


def build_monitor(cfg: MonitorConfig, directions: list[str], eval_only: frozenset[str] = frozenset()) -> Monitor:
    return MONITORS[cfg.monitor](cfg, directions, eval_only)
