"""EXP3 over directions rewarded by learning progress (Kreutzer et al. 2021, arXiv 2110.06997).

Each direction is an arm. After every `every` steps, each direction trained in the interval gets
a reward: the relative drop of its training loss since its previous reward (learning progress),
rescaled to [0, 1] by the running 20th and 80th percentiles of past rewards (as Graves et al.
2017 do). The reward is importance-weighted by the probability of the arm, and the arm's log
weight grows by γ·r̂/K. p = (1 − γ)·w/Σw + γ/K, so every direction keeps at least γ/K.
Using the training loss of consecutive batches (not the same batch before and after an update)
keeps the reward free of extra forward passes; the quantile rescaling absorbs its noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..sampling import Sampler, register


@dataclass
class Exp3Params:
    gamma: float = 0.1  # exploration rate
    window: int = 500  # past rewards kept for the quantiles
    low: float = 0.2  # quantile mapped to reward 0
    high: float = 0.8  # quantile mapped to reward 1

    def check(self, path: str) -> list[tuple[str, str]]:
        out = [] if 0 < self.gamma <= 1 else [(f"{path}.gamma", "must be in (0, 1]")]
        if not 0 <= self.low < self.high <= 1:
            out.append((f"{path}.low", "need 0 <= low < high <= 1"))
        if self.window < 2:
            out.append((f"{path}.window", "must be >= 2"))
        return out


def exp3_probs(log_w: np.ndarray, gamma: float) -> np.ndarray:
    w = np.exp(log_w - log_w.max())
    return (1 - gamma) * w / w.sum() + gamma / len(w)


class Exp3(Sampler):
    kind = "exp3"
    dynamic = True

    def __init__(self, names: Any, sizes: Any, params: Exp3Params) -> None:
        super().__init__(names, sizes)
        self.params = params
        self.log_w = np.zeros(len(self.names))
        self.sum_loss = np.zeros(len(self.names))
        self.sum_tok = np.zeros(len(self.names))
        self.prev = np.full(len(self.names), np.nan)
        self.history: list[float] = []

    def probabilities(self, step: int) -> np.ndarray:
        return exp3_probs(self.log_w, self.params.gamma)

    def scale(self, raw: float) -> float:
        if len(self.history) < 2:
            return 0.5
        lo, hi = np.quantile(self.history, [self.params.low, self.params.high])
        return 0.5 if hi <= lo else float(np.clip((raw - lo) / (hi - lo), 0.0, 1.0))

    def observe_train(self, step: int, loss: np.ndarray, tokens: np.ndarray) -> None:
        seen = ~np.isnan(loss)
        self.sum_loss[seen] += loss[seen] * tokens[seen]
        self.sum_tok[seen] += tokens[seen]
        if step % self.every:
            return
        p = self.probabilities(step)
        k = len(self.names)
        for i in np.flatnonzero(self.sum_tok > 0):
            now = self.sum_loss[i] / self.sum_tok[i]
            if not math.isnan(self.prev[i]) and self.prev[i] > 0:
                raw = (self.prev[i] - now) / self.prev[i]
                reward = self.scale(raw)
                self.history = (self.history + [raw])[-self.params.window:]
                self.log_w[i] += self.params.gamma * (reward / p[i]) / k
            self.prev[i] = now
        self.sum_loss[:] = 0.0
        self.sum_tok[:] = 0.0

    def _state(self) -> dict[str, Any]:
        return {"log_w": self.log_w.tolist(), "sum_loss": self.sum_loss.tolist(), "sum_tok": self.sum_tok.tolist(),
                "prev": self.prev.tolist(), "history": list(self.history)}

    def _load(self, state: dict[str, Any]) -> None:
        self.log_w = np.array(state["log_w"], dtype=np.float64)
        self.sum_loss = np.array(state["sum_loss"], dtype=np.float64)
        self.sum_tok = np.array(state["sum_tok"], dtype=np.float64)
        self.prev = np.array(state["prev"], dtype=np.float64)
        self.history = list(state["history"])


register("exp3", Exp3Params, Exp3)
