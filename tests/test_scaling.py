import dataclasses
import itertools

import numpy as np
import pytest

from pipeline.scaling import PARAMS, Fit, fit_direction, law, load_fits, save_fits, solve
from pipeline.sweep import ratio_weights

TRUE = {"k": 5.0, "alpha": 0.4, "gamma": 0.1, "b": 0.5, "q": 2.0, "beta": 0.6, "m_inf": 1.5}


def test_fit_recovers_the_law_from_noisy_synthetic_losses():
    rng = np.random.default_rng(0)
    size = 20000
    p = np.array([0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9])
    clean = law(p, size, *[TRUE[k] for k in PARAMS])
    noisy = clean + rng.normal(scale=0.01, size=len(p))
    fit = fit_direction("x", size, p, noisy, starts=24)
    assert fit.rmse < 0.02  # about the noise level
    grid = np.linspace(0.02, 0.9, 50)
    # the identifiable quantity is the curve itself: it matches the true law closely
    assert np.max(np.abs(fit.loss(grid) - law(grid, size, *[TRUE[k] for k in PARAMS]))) < 0.05


def fake_fit(name, k, alpha, c, beta, m):
    return Fit(name, 1000, {"k": k, "alpha": alpha, "gamma": 0.0, "b": c - 1.0, "q": 1.0, "beta": beta,
                            "m_inf": m}, 0.0, 5)


@pytest.mark.parametrize("fits", [
    [fake_fit("a", 2.0, 0.5, 0.5, 0.3, 1.0), fake_fit("b", 5.0, 0.3, 0.2, 0.6, 2.0)],
    [fake_fit("a", 2.0, 0.5, 0.5, 0.3, 1.0), fake_fit("b", 5.0, 0.3, 0.2, 0.6, 2.0),
     fake_fit("c", 1.0, 0.7, 1.0, 0.2, 0.5)],
])
def test_solver_matches_a_brute_force_grid(fits):
    r = np.full(len(fits), 1.0 / len(fits))
    p = solve(fits, r)
    step = 0.005
    grid = np.arange(step, 1.0, step)
    best, best_val = None, np.inf
    for head in itertools.product(grid, repeat=len(fits) - 1):
        last = 1.0 - sum(head)
        if last < step - 1e-12:
            continue
        x = np.array([*head, last])
        val = sum(r[i] * fits[i].loss(x[i]) for i in range(len(fits)))
        if val < best_val:
            best, best_val = x, val
    solver_val = sum(r[i] * fits[i].loss(p[i]) for i in range(len(fits)))
    assert solver_val <= best_val + 1e-6
    assert np.max(np.abs(p - best)) < 0.02
    assert p.sum() == pytest.approx(1.0)


def test_ratio_weights_split_the_group_by_size():
    w = ratio_weights(["a", "b", "c"], [300, 100, 50], {"a": "hrl", "b": "hrl", "c": "lrl"}, "lrl", 0.2)
    assert w == {"a": 0.6, "b": 0.2, "c": 0.2}
    with pytest.raises(ValueError, match="needs directions both in and outside"):
        ratio_weights(["a"], [1], {"a": "lrl"}, "lrl", 0.5)


def test_solver_stays_within_the_swept_ratios_unless_told_to_extrapolate():
    # "a" keeps improving with p: unbounded, the solver gives it nearly everything.
    a = dataclasses.replace(fake_fit("a", 2.0, 0.5, 0.0, 0.3, 1.0), p_range=(0.1, 0.6))
    b = dataclasses.replace(fake_fit("b", 50.0, 0.1, 0.0, 0.6, 2.0), p_range=(0.3, 0.9))
    free = solve([a, b], extrapolate=True)
    assert free[0] > 0.6
    boxed = solve([a, b])
    assert boxed[0] == pytest.approx(0.6, abs=1e-6) and boxed[1] == pytest.approx(0.4, abs=1e-6)
    with pytest.raises(ValueError, match="admit no distribution"):
        solve([dataclasses.replace(a, p_range=(0.1, 0.3)), dataclasses.replace(b, p_range=(0.3, 0.5))])


def test_fit_records_its_ratio_range_and_round_trips(tmp_path):
    p = np.array([0.05, 0.2, 0.4])
    fit = fit_direction("x", 1000, p, law(p, 1000, *[TRUE[k] for k in PARAMS]), starts=4)
    assert fit.p_range == (0.05, 0.4)
    save_fits([fit], tmp_path / "fit.json")
    assert load_fits(tmp_path / "fit.json") == [fit]
