"""Distributionally robust weights over directions (all observe the per-direction train loss).

- `cvar_dro`: worst-fraction (CVaR) DRO, Oren et al. 2019, in the form of the χ-IBR code
  (violet-zct/fairseq-dro-mnmt): directions sorted by EMA loss minus baseline get likelihood
  ratio 1/α until their data mass reaches α, the boundary one the fractional rest, the others a
  floor. The distribution is q ∝ p_data · h.
- `group_dro`: online group DRO, Sagawa et al. 2020: q ← q · exp(η ℓ) after every step.
- `excess_dro`: its excess-loss form (DoReMi, Xie et al. 2023a): ℓ replaced by
  max(ℓ − ℓ_ref, 0), the result mixed with uniform by `smoothing`.
- `chi2_dro`: χ²-DRO by iterated best response, Zhou et al. 2021: every `every` steps (a
  virtual epoch) q ∝ p·relu(ℓ − b − η), q/p clamped below at `min_prob`, η by bisection so that
  ½ Σ p (q/p − 1)² = ρ.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..sampling import Sampler, register


def read_baselines(names: list[str], given: dict[str, float], run_dir: str | None) -> np.ndarray:
    """Per-direction baselines: given values, else an earlier run's last logged train NLL, else 0."""
    out = np.zeros(len(names))
    if run_dir:
        rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
        last: dict[str, float] = {}
        for r in rows:
            for d, v in r.get("directions", {}).items():
                last[d] = v["nll"]
        missing = [n for n in names if n not in last]
        if missing:
            raise ValueError(f"baselines_from {run_dir}: no train loss logged for {missing}")
        out = np.array([last[n] for n in names])
    for i, n in enumerate(names):
        if n in given:
            out[i] = given[n]
    return out


class _EmaLoss(Sampler):
    """Shared by the DRO kinds: an EMA of each direction's train loss (NaN until first seen)."""

    dynamic = True
    ema = 0.1

    def __init__(self, names: Any, sizes: Any) -> None:
        super().__init__(names, sizes)
        self.loss = np.full(len(self.names), np.nan)
        self.q = self.data_p.copy()
        self.updates = 0

    def _ema_update(self, loss: np.ndarray) -> None:
        seen = ~np.isnan(loss)
        fresh = seen & np.isnan(self.loss)
        self.loss[fresh] = loss[fresh]
        old = seen & ~fresh
        self.loss[old] = (1 - self.ema) * self.loss[old] + self.ema * loss[old]

    def probabilities(self, step: int) -> np.ndarray:
        return self.q

    def log_values(self) -> dict[str, Any]:
        return {"ema_loss": {n: (None if math.isnan(v) else round(float(v), 5)) for n, v in zip(self.names, self.loss)}}

    def _state(self) -> dict[str, Any]:
        return {"loss": self.loss.tolist(), "q": self.q.tolist(), "updates": self.updates}

    def _load(self, state: dict[str, Any]) -> None:
        self.loss = np.array(state["loss"], dtype=np.float64)
        self.q = np.array(state["q"], dtype=np.float64)
        self.updates = int(state["updates"])


@dataclass
class CvarParams:
    alpha: float = 0.5  # the worst fraction of the data mass
    floor: float = 0.1  # likelihood ratio kept by the other directions
    ema: float = 0.05
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
    eta: float = 0.01  # step size of the exponentiated-gradient update
    reference: dict[str, float] = field(default_factory=dict)  # excess_dro: ℓ_ref per direction
    reference_from: str | None = None  # excess_dro: an earlier run whose last train losses are ℓ_ref
    smoothing: float = 1e-3  # excess_dro: mixed with uniform

    def check(self, path: str) -> list[tuple[str, str]]:
        out = [] if self.eta > 0 else [(f"{path}.eta", "must be > 0")]
        if not 0 <= self.smoothing < 1:
            out.append((f"{path}.smoothing", "must be in [0, 1)"))
        return out


class GroupDro(_EmaLoss):
    """Starts uniform (as Sagawa et al.'s code); ℓ is each direction's mean loss in the step."""

    kind = "group_dro"
    excess = False

    def __init__(self, names: Any, sizes: Any, params: GroupDroParams) -> None:
        super().__init__(names, sizes)
        self.params = params
        self.log_q = np.full(len(self.names), -math.log(len(self.names)))
        self.q = np.exp(self.log_q)
        self.reference = (read_baselines(self.names, params.reference, params.reference_from)
                          if self.excess else np.zeros(len(self.names)))

    def observe_train(self, step: int, loss: np.ndarray, tokens: np.ndarray) -> None:
        self._ema_update(loss)
        seen = ~np.isnan(loss)
        signal = np.where(seen, loss, 0.0)
        if self.excess:
            signal = np.maximum(signal - self.reference, 0.0) * seen
        self.log_q = self.log_q + self.params.eta * signal
        self.log_q -= np.logaddexp.reduce(self.log_q)
        q = np.exp(self.log_q)
        if self.excess:
            q = (1 - self.params.smoothing) * q + self.params.smoothing / len(q)
        self.q = q / q.sum()
        self.updates += 1

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "log_q": self.log_q.tolist()}

    def _load(self, state: dict[str, Any]) -> None:
        super()._load(state)
        self.log_q = np.array(state["log_q"], dtype=np.float64)


class ExcessDro(GroupDro):
    kind = "excess_dro"
    excess = True


@dataclass
class Chi2Params:
    rho: float = 0.05
    min_prob: float = 0.2  # lower clamp of q/p
    ema: float = 0.1
    tol: float = 1e-4
    warmup: int = 1  # virtual epochs on p before the first update applies
    baselines: dict[str, float] = field(default_factory=dict)
    baselines_from: str | None = None

    def check(self, path: str) -> list[tuple[str, str]]:
        out = [] if self.rho > 0 else [(f"{path}.rho", "must be > 0")]
        if not 0 <= self.min_prob < 1:
            out.append((f"{path}.min_prob", "must be in [0, 1)"))
        return out


def chi2_weights(p: np.ndarray, loss: np.ndarray, rho: float, min_prob: float, tol: float = 1e-4) -> np.ndarray:
    """q on the χ² ball ½ Σ p (q/p − 1)² = ρ around p that favours high losses."""

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
        if self.updates <= self.params.warmup:
            return
        base = self.loss - self.baselines
        self.q = chi2_weights(self.data_p, base, self.params.rho, self.params.min_prob, self.params.tol)


register("cvar_dro", CvarParams, CvarDro)
register("group_dro", GroupDroParams, GroupDro)
register("excess_dro", GroupDroParams, ExcessDro)
register("chi2_dro", Chi2Params, Chi2Dro)
