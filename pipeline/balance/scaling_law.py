"""Scaling-law sampling weights (Chen et al. 2023, "On the Pareto Front of Multilingual NMT").

Chen et al.'s law for a direction's dev loss at sampling ratio p and data size D is
    L(p, D) = (k·p)^(−α) + (D^γ + b)·(q·p)^β + M∞.
A sweep varies p only: each direction has one D, so k, q, γ and b enter only through two
constants, and the identifiable form, the one fitted here, is
    L(p) = A·p^(−α) + B·p^β + M∞,   A = k^(−α),  B = (D^γ + b)·q^β,
five parameters per direction (fitting all seven to one D spreads one constant over four
parameters and the fit reports values that mean nothing). It is fitted by scipy's bounded least
squares from several starts. How well the law describes the data is its leave-one-out error:
each sweep point predicted by the law fitted to the others. An in-sample error says nothing here:
five parameters fit five points exactly, whatever they are, so a fit needs at least 6 ratios and
the leave-one-out error at least 7 (`mmtc sweep`'s default has 7).
`solve` returns p = argmin Σ r_i·L_i(p_i) on the simplex, each p_i kept within the ratios its
sweep tried: the law interpolates, its extrapolation is arbitrary (on the demo sweep it once put
94% of the mass on one direction, far past the 22% the sweep had given it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares, minimize

PARAMS = ("a", "alpha", "b", "beta", "m_inf")
LOWER = np.array([0.0, 1e-4, -1e6, 1e-4, 0.0])
UPPER = np.array([1e6, 5.0, 1e6, 5.0, 50.0])
MIN_POINTS = len(PARAMS) + 1  # to fit with a residual at all
MIN_POINTS_LOO = len(PARAMS) + 2  # each leave-one-out fit still has a residual


@dataclass
class Fit:
    direction: str
    size: int
    params: dict[str, float]
    rmse: float  # in-sample, for reference only
    points: int
    p_range: tuple[float, float] | None = None  # the lowest and highest ratio the fit saw
    loo_rmse: float | None = None  # leave-one-out: None below MIN_POINTS_LOO points

    def loss(self, p: np.ndarray | float) -> np.ndarray:
        return law(np.asarray(p, dtype=np.float64), *[self.params[k] for k in PARAMS])


def law(p: np.ndarray, a: float, alpha: float, b: float, beta: float, m_inf: float) -> np.ndarray:
    p = np.maximum(p, 1e-12)
    return a * p ** (-alpha) + b * p ** beta + m_inf


def from_chen(k: float, alpha: float, gamma: float, b: float, q: float, beta: float, m_inf: float,
              size: float) -> dict[str, float]:
    """The identifiable parameters of Chen et al.'s seven at one data size."""
    return {"a": k ** (-alpha), "alpha": alpha, "b": (size ** gamma + b) * q ** beta, "beta": beta, "m_inf": m_inf}


def _least_squares(p: np.ndarray, y: np.ndarray, starts: int, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    best = None
    for i in range(starts):
        x0 = np.array([10 ** rng.uniform(-2, 1), rng.uniform(0.05, 1.0), rng.uniform(-2, 2), rng.uniform(0.05, 1.0),
                       max(0.0, float(y.min()) * rng.uniform(0.3, 1.0))]) if i else \
            np.array([0.5, 0.5, 0.0, 0.5, max(0.0, float(y.min()) * 0.8)])
        x0 = np.clip(x0, LOWER + 1e-9, UPPER - 1e-9)
        res = least_squares(lambda x: law(p, *x) - y, x0, bounds=(LOWER, UPPER), max_nfev=4000)
        if best is None or res.cost < best.cost:
            best = res
    return best


def fit_direction(name: str, size: int, ratios: Sequence[float], losses: Sequence[float], starts: int = 24,
                  seed: int = 0) -> Fit:
    """Least squares from `starts` random starts within the bounds (the best wins), and the
    leave-one-out error when there are enough points."""
    p = np.asarray(ratios, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    if len(p) < MIN_POINTS:
        raise ValueError(f"{name}: the law has {len(PARAMS)} parameters, so a fit needs at least {MIN_POINTS} "
                         f"ratios (and {MIN_POINTS_LOO} for its leave-one-out error); the sweep has {len(p)}")
    best = _least_squares(p, y, starts, seed)
    rmse = float(np.sqrt(np.mean(best.fun ** 2)))
    loo = None
    if len(p) >= MIN_POINTS_LOO:
        errors = []
        for i in range(len(p)):
            keep = np.arange(len(p)) != i
            res = _least_squares(p[keep], y[keep], max(4, starts // 3), seed + 1 + i)
            errors.append(float(law(p[i:i + 1], *res.x)[0] - y[i]))
        loo = math.sqrt(float(np.mean(np.square(errors))))
    return Fit(name, int(size), dict(zip(PARAMS, map(float, best.x))), rmse, len(p),
               (float(p.min()), float(p.max())), loo)


def solve(fits: Sequence[Fit], importance: Sequence[float] | None = None, floor: float = 1e-4,
          starts: int = 16, seed: int = 0, extrapolate: bool = False) -> np.ndarray:
    """p on the simplex minimising Σ r_i L_i(p_i); r defaults to 1/N. Unless `extrapolate`, each
    p_i stays within its fit's `p_range`."""
    n = len(fits)
    r = np.full(n, 1.0 / n) if importance is None else np.asarray(importance, dtype=np.float64)
    bounds = [(floor, 1.0)] * n
    if not extrapolate:
        bounds = [(max(floor, f.p_range[0]), f.p_range[1]) if f.p_range else (floor, 1.0) for f in fits]
        lo, hi = sum(b[0] for b in bounds), sum(b[1] for b in bounds)
        if lo > 1.0 + 1e-9 or hi < 1.0 - 1e-9:
            raise ValueError(f"the sweep's ratio ranges admit no distribution (their lower ends sum to {lo:.3f}, "
                             f"upper ends to {hi:.3f}); sweep wider ratios or solve with extrapolation")

    def objective(x: np.ndarray) -> float:
        return float(sum(r[i] * fits[i].loss(x[i]) for i in range(n)))

    rng = np.random.default_rng(seed)
    best = None
    lower, upper = np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])
    for i in range(starts):
        x0 = np.full(n, 1.0 / n) if i == 0 else rng.dirichlet(np.ones(n))
        # Into the box, then along the box's free room onto the simplex.
        x0 = np.clip(x0, lower, upper)
        gap = 1.0 - x0.sum()
        room = (upper - x0) if gap > 0 else (x0 - lower)
        x0 = x0 + gap * room / max(room.sum(), 1e-12)
        res = minimize(objective, x0, method="SLSQP", bounds=bounds,
                       constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1.0}], options={"maxiter": 500})
        if res.success and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise RuntimeError("the simplex solver did not converge from any start")
    x = np.clip(best.x, lower, upper)
    return x / x.sum()


def save_fits(fits: Sequence[Fit], path: Path) -> None:
    path.write_text(json.dumps({"law": "L(p) = a p^-alpha + b p^beta + m_inf (Chen et al. 2023 at one D per direction)",
                                "fits": [asdict(f) for f in fits]}, indent=1))


def load_fits(path: Path) -> list[Fit]:
    data: dict[str, Any] = json.loads(path.read_text())
    if any("k" in f["params"] for f in data["fits"]):
        raise ValueError(f"{path}: a fit of the seven-parameter law (before the identifiable form); "
                         "run `mmtc scaling fit` on its sweep again")
    return [Fit(**{**f, "p_range": tuple(f["p_range"]) if f.get("p_range") else None}) for f in data["fits"]]
