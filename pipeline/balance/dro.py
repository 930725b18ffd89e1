"""Distributionally robust weights over directions, from each direction's label-smoothed train
loss (the loss fairseq-dro-mnmt's criteria and Sagawa et al.'s code feed their weights).

- `cvar_dro`: worst-fraction (CVaR) DRO, Oren et al. 2019, in the form of the χ-IBR code
  (violet-zct/fairseq-dro-mnmt, plain_dro_ls_cross_entropy.py): directions sorted by EMA loss
  minus baseline get likelihood ratio 1/α until their data mass reaches α, the boundary one the
  fractional rest, the others a floor. The distribution is q ∝ p_data · h.
- `group_dro`: online group DRO, Sagawa et al. 2020: q ← q · exp(η ℓ) after every step.
  A direction absent from the step contributes its last observed loss (Sagawa's code, whose
  batches are not drawn from q, uses 0; under `apply: sample` that is an absorbing state: a
  direction whose weight is small is rarely drawn, gets 0, and sinks further whatever its loss).
- `excess_group_dro`: group DRO on max(ℓ − ℓ_ref, 0) against one constant reference loss per
  direction (given, or an earlier run's last logged train loss), mixed with uniform by
  `smoothing`. DoReMi without its reference model (see `doremi.py` for DoReMi itself): no extra
  forward pass, for when a second model does not fit; the excess is of step means, not per token.
- `chi2_dro`: χ²-DRO by iterated best response, Zhou et al. 2021 (chi_square_resample.py):
  every `every` steps (a virtual epoch) q ∝ p·relu(ℓ − b − η), q/p clamped below at `min_prob`,
  η by bisection so that ½ Σ p (q/p − 1)² = ρ; then q ≥ min(p) (`clamp_q_to_min`) and renormalised.

Four kinds in one module (about 300 lines): they share the loss bookkeeping (EMA, the last
observed loss per direction, baselines) and read best side by side against their papers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.balance.base import Sampler, register


def read_baselines(names: list[str], given: dict[str, float], run_dir: str | None) -> np.ndarray:
    """Per-direction baselines: given values, else an earlier run's last logged label-smoothed train
    loss (the reference takes the ERM model's label-smoothed train loss), else 0."""
    out = np.zeros(len(names))
    if run_dir:
        rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
        last: dict[str, float] = {}
        for r in rows:
            for d, v in r.get("directions", {}).items():
                last[d] = v["loss"]
        missing = [n for n in names if n not in last]
        if missing:
            raise ValueError(f"baselines_from {run_dir}: no train loss logged for {missing}")
        out = np.array([last[n] for n in names])
    for i, n in enumerate(names):
        if n in given:
            out[i] = given[n]
    return out


class _EmaLoss(Sampler):
    """Shared by the DRO kinds: an EMA of each direction's train loss (NaN until first seen).
    `restart()` makes each direction's next observation start its EMA afresh (the reference's
    clear_history); until then the old value stands, so an unobserved direction keeps it."""

    dynamic = True
    train_loss = "smoothed"
    ema = 0.1

    def __init__(self, names: Any, sizes: Any) -> None:
        super().__init__(names, sizes)
        self.loss = np.full(len(self.names), np.nan)
        self.stale = np.zeros(len(self.names), dtype=bool)
        self.q = self.data_p.copy()
        self.updates = 0

    def _ema_update(self, loss: np.ndarray) -> None:
        seen = ~np.isnan(loss)
        fresh = seen & (np.isnan(self.loss) | self.stale)
        self.loss[fresh] = loss[fresh]
        old = seen & ~fresh
        self.loss[old] = (1 - self.ema) * self.loss[old] + self.ema * loss[old]
        self.stale[seen] = False

    def restart(self) -> None:
        self.stale[:] = True

    def probabilities(self, step: int) -> np.ndarray:
        return self.q

    def log_values(self) -> dict[str, Any]:
        return {"ema_loss": {n: (None if math.isnan(v) else round(float(v), 5)) for n, v in zip(self.names, self.loss)}}

    def _state(self) -> dict[str, Any]:
        return {"loss": self.loss.tolist(), "q": self.q.tolist(), "updates": self.updates,
                "stale": self.stale.tolist()}

    def _load(self, state: dict[str, Any]) -> None:
        self.loss = np.array(state["loss"], dtype=np.float64)
        self.stale = np.array(state["stale"], dtype=bool)
        self.q = np.array(state["q"], dtype=np.float64)
        self.updates = int(state["updates"])


@dataclass
class CvarParams:
    alpha: float = 0.5  # the worst fraction of the data mass
    floor: float = 0.1  # likelihood ratio kept by the other directions (the reference's h_fun fill)
    ema: float = 0.1  # the reference's --ema default
    baselines: dict[str, float] = field(default_factory=dict)
    baselines_from: str | None = None

    def check(self, path: str) -> list[tuple[str, str]]:
        out = [] if 0 < self.alpha <= 1 else [(f"{path}.alpha", "must be in (0, 1]")]
        if not 0 < self.ema <= 1:
            out.append((f"{path}.ema", "must be in (0, 1]"))
        if self.floor < 0:
            out.append((f"{path}.floor", "must be >= 0"))
        return out


def cvar_ratios(score: np.ndarray, mass: np.ndarray, alpha: float, floor: float) -> np.ndarray:
    """Likelihood ratios h: 1/α on the worst directions until their mass reaches α, the boundary
    direction the fraction that makes the worst α of the mass exactly 1, `floor` elsewhere."""
    order = np.argsort(-score, kind="stable")
    sorted_mass = mass[order]
    cut = int(np.sum(np.cumsum(sorted_mass) < alpha))
    cut = min(cut, len(mass) - 1)
    h = np.full(len(mass), floor)
    h[order[:cut]] = 1.0 / alpha
    leftover = 1.0 - sorted_mass[:cut].sum() / alpha
    h[order[cut]] = leftover / sorted_mass[cut]
    return h


class CvarDro(_EmaLoss):
    kind = "cvar_dro"

    def __init__(self, names: Any, sizes: Any, params: CvarParams) -> None:
        super().__init__(names, sizes)
        self.params, self.ema = params, params.ema
        self.baselines = read_baselines(self.names, params.baselines, params.baselines_from)
        self.h = np.ones(len(self.names))

    def observe_train(self, step: int, loss: np.ndarray, tokens: np.ndarray) -> None:
        self._ema_update(loss)
        if step % self.every or np.isnan(self.loss).any():
            return
        self.h = cvar_ratios(self.loss - self.baselines, self.data_p, self.params.alpha, self.params.floor)
        q = self.data_p * self.h
        self.q = q / q.sum()
        self.updates += 1

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "h": self.h.tolist()}

    def _load(self, state: dict[str, Any]) -> None:
        super()._load(state)
        self.h = np.array(state["h"], dtype=np.float64)


@dataclass
class GroupDroParams:
    eta: float = 0.01  # step size of the exponentiated-gradient update (Sagawa et al.'s default)
    reference: dict[str, float] = field(default_factory=dict)  # excess_group_dro: ℓ_ref per direction
    reference_from: str | None = None  # excess_group_dro: an earlier run whose last train losses are ℓ_ref
    smoothing: float = 1e-3  # excess_group_dro: mixed with uniform

    def check(self, path: str) -> list[tuple[str, str]]:
        out = [] if self.eta > 0 else [(f"{path}.eta", "must be > 0")]
        if not 0 <= self.smoothing < 1:
            out.append((f"{path}.smoothing", "must be in [0, 1)"))
        return out


class GroupDro(_EmaLoss):
    """Starts uniform (as Sagawa et al.'s code); ℓ is each direction's mean loss in the step, or
    its last observed one when it had no tokens in the step (0 before it was ever seen)."""

    kind = "group_dro"
    excess = False

    def __init__(self, names: Any, sizes: Any, params: GroupDroParams) -> None:
        super().__init__(names, sizes)
        self.params = params
        self.log_q = np.full(len(self.names), -math.log(len(self.names)))
        self.q = np.exp(self.log_q)
        self.reference = (read_baselines(self.names, params.reference, params.reference_from)
                          if self.excess else np.zeros(len(self.names)))
        self.last = np.full(len(self.names), np.nan)

    def observe_train(self, step: int, loss: np.ndarray, tokens: np.ndarray) -> None:
        self._ema_update(loss)
        seen = ~np.isnan(loss)
        self.last[seen] = loss[seen]
        known = ~np.isnan(self.last)
        signal = np.where(known, self.last, 0.0)
        if self.excess:
            signal = np.maximum(signal - self.reference, 0.0) * known
        self.log_q = self.log_q + self.params.eta * signal
        self.log_q -= np.logaddexp.reduce(self.log_q)
        q = np.exp(self.log_q)
        if self.excess:
            q = (1 - self.params.smoothing) * q + self.params.smoothing / len(q)
        self.q = q / q.sum()
        self.updates += 1

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "log_q": self.log_q.tolist(), "last": self.last.tolist()}

    def _load(self, state: dict[str, Any]) -> None:
        super()._load(state)
        self.log_q = np.array(state["log_q"], dtype=np.float64)
        self.last = np.array(state["last"], dtype=np.float64)


class ExcessGroupDro(GroupDro):
    kind = "excess_group_dro"
    excess = True


@dataclass
class Chi2Params:
    rho: float = 0.05
    min_prob: float = 0.2  # lower clamp of q/p (the reference's --min-prob default)
    ema: float = 0.1  # the reference's --ema
    tol: float = 1e-4  # the reference's bisection tolerance
    warmup: int = 1  # virtual epochs on p: the first q applies to epoch warmup + 1 (at least 1 on p)
    clamp_q_to_min: bool = True  # q >= min(p) after the bisection (the paper's script passes 1)
    clear_history: bool = True  # each virtual epoch's EMA starts afresh (the reference's default)
    baselines: dict[str, float] = field(default_factory=dict)
    baselines_from: str | None = None

    def check(self, path: str) -> list[tuple[str, str]]:
        out = [] if self.rho > 0 else [(f"{path}.rho", "must be > 0")]
        if not 0 <= self.min_prob < 1:
            out.append((f"{path}.min_prob", "must be in [0, 1)"))
        if self.warmup < 0:
            out.append((f"{path}.warmup", "must be >= 0"))
        return out


def chi2_weights(p: np.ndarray, loss: np.ndarray, rho: float, min_prob: float, tol: float = 1e-4) -> np.ndarray:
    """q on the χ² ball ½ Σ p (q/p − 1)² = ρ around p that favours high losses.

    When no baselined loss is positive (every direction beats its baseline) the bracket below
    is empty; the reference then weighs the raw losses, and so does the caller (`Chi2Dro`)."""
    if loss.max() <= 0:
        raise ValueError("chi2_weights needs a positive loss; fall back to the raw EMA losses")

    def q_of(eta: float) -> np.ndarray:
        pp = p * np.maximum(loss - eta, 0.0)
        # At η >= max loss every weight vanishes: the limit puts all mass on the worst direction(s).
        q = pp / pp.sum() if pp.sum() > 0 else (p * (loss == loss.max())) / (p * (loss == loss.max())).sum()
        cq = np.maximum(q / p, min_prob)
        return cq * p / (cq * p).sum()

    def f(eta: float) -> float:
        q = q_of(eta)
        return float(0.5 * (p * (q / p - 1) ** 2).sum() - rho)

    lo = -(1.0 / (math.sqrt(2 * rho + 1) - 1)) * loss.max()
    hi = float(loss.max())
    flo, fhi = f(lo), f(hi)
    for _ in range(60):  # widen until the root is bracketed (f increases with η)
        if flo <= 0 <= fhi:
            break
        width = hi - lo
        if flo > 0:
            lo, hi = lo - 2 * width, lo
        if fhi < 0:
            lo, hi = hi, hi + 2 * width
        flo, fhi = f(lo), f(hi)
    eta = 0.5 * (lo + hi)
    for _ in range(1000):
        eta = 0.5 * (lo + hi)
        v = f(eta)
        if abs(v) <= tol:
            break
        if v > 0:
            hi = eta
        else:
            lo = eta
    return q_of(eta)


class Chi2Dro(_EmaLoss):
    kind = "chi2_dro"

    def __init__(self, names: Any, sizes: Any, params: Chi2Params) -> None:
        super().__init__(names, sizes)
        self.params, self.ema = params, params.ema
        self.baselines = read_baselines(self.names, params.baselines, params.baselines_from)

    def observe_train(self, step: int, loss: np.ndarray, tokens: np.ndarray) -> None:
        self._ema_update(loss)
        if step % self.every or np.isnan(self.loss).any():
            return
        self.updates += 1
        # The reference recomputes q at the start of each epoch e >= 2 and uses it when e > warmup:
        # the q computed after virtual epoch u applies to epoch u + 1.
        if self.updates >= self.params.warmup:
            base = self.loss - self.baselines
            if base.max() <= 0:  # every direction below its baseline: the reference's fallback
                base = self.loss
            q = chi2_weights(self.data_p, base, self.params.rho, self.params.min_prob, self.params.tol)
            if self.params.clamp_q_to_min:
                q = np.maximum(q, self.data_p.min())
                q = q / q.sum()
            self.q = q
        if self.params.clear_history:
            self.restart()


register("cvar_dro", CvarParams, CvarDro)
register("group_dro", GroupDroParams, GroupDro)
register("excess_group_dro", GroupDroParams, ExcessGroupDro)
register("chi2_dro", Chi2Params, Chi2Dro)
