"""Scaling-law sampling weights (Chen et al. 2023, "On the Pareto Front of Multilingual NMT").

Per direction, the dev loss as a function of its sampling ratio p and its data size D is
    L(p, D) = (k·p)^(−α) + (D^γ + b)·(q·p)^β + M∞
fitted with scipy's bounded least squares from several starts to the losses of short runs at
several ratios (`mmtc sweep`). With one D per direction, γ and b (and q against the factor they
multiply) are not separately identifiable: the fit still reports every parameter, and its error
is what tells whether the law describes the data. `solve` returns p = argmin Σ r_i·L_i(p_i, D_i)
on the simplex, each p_i kept within the ratios its sweep tried: with 7 parameters fitted to a
handful of points the law interpolates, but its extrapolation is arbitrary (on the demo sweep it
put 94% of the mass on one direction, far past the 22% the sweep had given it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares, minimize

PARAMS = ("k", "alpha", "gamma", "b", "q", "beta", "m_inf")
LOWER = np.array([1e-6, 1e-4, -2.0, -1e6, 1e-6, 1e-4, 0.0])
UPPER = np.array([1e6, 5.0, 2.0, 1e6, 1e6, 5.0, 50.0])


@dataclass
class Fit:
    direction: str
    size: int
    params: dict[str, float]
    rmse: float
    points: int
    p_range: tuple[float, float] | None = None  # the lowest and highest ratio the fit saw

    def loss(self, p: np.ndarray | float) -> np.ndarray:
        return law(np.asarray(p, dtype=np.float64), self.size, *[self.params[k] for k in PARAMS])


def law(p: np.ndarray, d: float, k: float, alpha: float, gamma: float, b: float, q: float, beta: float,
        m_inf: float) -> np.ndarray:
    p = np.maximum(p, 1e-12)
    return (k * p) ** (-alpha) + (d ** gamma + b) * (q * p) ** beta + m_inf


def fit_direction(name: str, size: int, ratios: Sequence[float], losses: Sequence[float], starts: int = 24,
                  seed: int = 0) -> Fit:
    """Least squares from `starts` random starts within the bounds; the best fit wins."""
    p = np.asarray(ratios, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    if len(p) < 3:
        raise ValueError(f"{name}: need at least 3 ratios to fit the law, got {len(p)}")
    rng = np.random.default_rng(seed)
    best = None
    for i in range(starts):
        x0 = np.array([
            10 ** rng.uniform(-1, 2), rng.uniform(0.05, 1.0), rng.uniform(-0.5, 0.5), rng.uniform(-1, 1),
            10 ** rng.uniform(-1, 1), rng.uniform(0.05, 1.0), max(0.0, float(y.min()) * rng.uniform(0.3, 1.0)),
        ]) if i else np.array([1.0, 0.5, 0.0, 0.0, 1.0, 0.5, max(0.0, float(y.min()) * 0.8)])
        x0 = np.clip(x0, LOWER + 1e-9, UPPER - 1e-9)
        res = least_squares(lambda x: law(p, size, *x) - y, x0, bounds=(LOWER, UPPER), max_nfev=4000)
        if best is None or res.cost < best.cost:
            best = res
    assert best is not None
    rmse = float(np.sqrt(np.mean(best.fun ** 2)))
    return Fit(name, int(size), dict(zip(PARAMS, map(float, best.x))), rmse, len(p),
               (float(p.min()), float(p.max())))


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
    path.write_text(json.dumps({"law": "L(p,D) = (k p)^-alpha + (D^gamma + b) (q p)^beta + m_inf",
                                "fits": [asdict(f) for f in fits]}, indent=1))


def load_fits(path: Path) -> list[Fit]:
    data: dict[str, Any] = json.loads(path.read_text())
    return [Fit(**{**f, "p_range": tuple(f["p_range"]) if f.get("p_range") else None}) for f in data["fits"]]
