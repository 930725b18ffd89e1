"""EXP3 over directions rewarded by learning progress (Kreutzer et al. 2021, arXiv 2110.06997).

Each direction is an arm. After every `every` steps, each direction trained in the interval gets
a reward: the relative drop of its training loss since its previous reward (learning progress),
rescaled to [0, 1] by the 20th and 80th percentiles of the past rewards (as Graves et al. 2017
do; the rewards of one update are all scaled against the history before it, then added to it).
p = (1 − γ)·w/Σw + γ/K, so every direction keeps at least γ/K.

Feedback. EXP3 pulls one arm a round and divides its reward by that arm's probability, which
makes the estimate unbiased when only the pulled arm is seen. Our batches mix every direction, so
each interval observes (almost) every arm: dividing by p_i there would credit rare arms 1/p_i
times over, and the fixed point becomes probability matching (p ∝ E[r]) instead of concentrating
on the arm with the most progress. With full information the unbiased estimate of r_i is r_i
itself, so the update is Hedge's: log w_i += γ·r_i/K for every observed arm, the step EXP3 takes
in expectation. An arm is missed in an interval of N sentences with probability (1 − p_i)^N
≤ (1 − γ/K)^N (e^-12 at γ=0.1, K=8, N=1,000); a missed arm keeps its weight and its previous
loss until it is seen again.
Using the training loss of consecutive batches (not the same batch before and after an update)
keeps the reward free of extra forward passes; the quantile rescaling absorbs its noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.balance.base import Sampler, register


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


def scale_rewards(raw: np.ndarray, history: list[float], low: float, high: float) -> np.ndarray:
    """Raw progress mapped to [0, 1] by the history's quantiles; 0.5 while they say nothing."""
    if len(history) < 2:
        return np.full(len(raw), 0.5)
    lo, hi = np.quantile(history, [low, high])
    if hi <= lo:
        return np.full(len(raw), 0.5)
    return np.clip((raw - lo) / (hi - lo), 0.0, 1.0)


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
        self.last_reward = np.full(len(self.names), np.nan)

    def probabilities(self, step: int) -> np.ndarray:
        return exp3_probs(self.log_w, self.params.gamma)

    def observe_train(self, step: int, loss: np.ndarray, tokens: np.ndarray) -> None:
        seen = ~np.isnan(loss)
        self.sum_loss[seen] += loss[seen] * tokens[seen]
        self.sum_tok[seen] += tokens[seen]
        if step % self.every:
            return
        observed = self.sum_tok > 0
        now = np.where(observed, self.sum_loss / np.maximum(self.sum_tok, 1e-300), np.nan)
        rewarded = observed & (np.nan_to_num(self.prev) > 0)  # seen before, with a positive loss
        self.last_reward[:] = np.nan
        if rewarded.any():
            raw = (self.prev[rewarded] - now[rewarded]) / self.prev[rewarded]
            reward = scale_rewards(raw, self.history, self.params.low, self.params.high)
            self.log_w[rewarded] += self.params.gamma * reward / len(self.names)
            self.last_reward[rewarded] = reward
            self.history = (self.history + raw.tolist())[-self.params.window:]
        self.prev[observed] = now[observed]
        self.sum_loss[:] = 0.0
        self.sum_tok[:] = 0.0

    def log_values(self) -> dict[str, Any]:
        return {"reward": {n: round(float(r), 5) for n, r in zip(self.names, self.last_reward) if not np.isnan(r)}}

    def _state(self) -> dict[str, Any]:
        return {"log_w": self.log_w.tolist(), "sum_loss": self.sum_loss.tolist(), "sum_tok": self.sum_tok.tolist(),
                "prev": self.prev.tolist(), "history": list(self.history), "reward": self.last_reward.tolist()}

    def _load(self, state: dict[str, Any]) -> None:
        self.log_w = np.array(state["log_w"], dtype=np.float64)
        self.sum_loss = np.array(state["sum_loss"], dtype=np.float64)
        self.sum_tok = np.array(state["sum_tok"], dtype=np.float64)
        self.prev = np.array(state["prev"], dtype=np.float64)
        self.history = list(state["history"])
        self.last_reward = np.array(state.get("reward", [np.nan] * len(self.names)), dtype=np.float64)


register("exp3", Exp3Params, Exp3)
