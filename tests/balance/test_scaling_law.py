import dataclasses
import itertools

import numpy as np
import pytest
import yaml

from pipeline.balance.scaling_law import (
    PARAMS,
    Fit,
    fit_direction,
    from_chen,
    law,
    load_fits,
    save_fits,
    solve,
)
from pipeline.launch.sweep import ratio_weights, write_recipe_with_weights

# Chen et al.'s seven parameters at one data size D = 20,000
CHEN = {"k": 5.0, "alpha": 0.4, "gamma": 0.1, "b": 0.5, "q": 2.0, "beta": 0.6, "m_inf": 1.5}
SIZE = 20000
RATIOS = np.array([0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9])


def chen_law(p):
    c = CHEN
    return (c["k"] * p) ** -c["alpha"] + (SIZE ** c["gamma"] + c["b"]) * (c["q"] * p) ** c["beta"] + c["m_inf"]


def test_identifiable_form_by_hand():
    """At one D the seven parameters collapse to five: A = k^-α = 5^-0.4, B = (D^γ + b)·q^β."""
    ident = from_chen(**CHEN, size=SIZE)
    assert ident["a"] == pytest.approx(5.0 ** -0.4) and ident["a"] == pytest.approx(0.525306, abs=1e-6)
    assert ident["b"] == pytest.approx((20000 ** 0.1 + 0.5) * 2 ** 0.6)
    assert ident["b"] == pytest.approx(4.838430, abs=1e-6)  # (2.692148 + 0.5) · 1.515717
    np.testing.assert_allclose(law(RATIOS, *[ident[k] for k in PARAMS]), chen_law(RATIOS), rtol=1e-12)


def test_fit_recovers_the_identifiable_parameters_from_exact_losses():
    fit = fit_direction("x", SIZE, RATIOS, chen_law(RATIOS), starts=24)
    truth = from_chen(**CHEN, size=SIZE)
    for k in PARAMS:
        assert fit.params[k] == pytest.approx(truth[k], rel=2e-3), k
    assert fit.loo_rmse < 1e-3


def test_fit_on_noisy_losses_and_its_leave_one_out_error():
    rng = np.random.default_rng(0)
    noisy = chen_law(RATIOS) + rng.normal(scale=0.01, size=len(RATIOS))
    fit = fit_direction("x", SIZE, RATIOS, noisy, starts=24)
    assert fit.rmse < 0.02 and fit.loo_rmse < 0.06  # about the noise level
    grid = np.linspace(0.02, 0.9, 50)
    assert np.max(np.abs(fit.loss(grid) - chen_law(grid))) < 0.05


def test_leave_one_out_error_exposes_data_the_law_does_not_describe():
    """Five parameters fit anything at five points (in-sample rmse 0): the leave-one-out error of
    a zigzag the law cannot follow is large, that of the law's own curve is not."""
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9])
    zigzag = np.array([3.0, 2.0, 3.0, 2.0, 3.0, 2.0, 3.0])
    assert fit_direction("z", SIZE, p, zigzag, starts=12).loo_rmse > 0.4
    assert fit_direction("x", SIZE, p, chen_law(p), starts=12).loo_rmse < 0.01
    with pytest.raises(ValueError, match="at least 6 ratios"):
        fit_direction("x", SIZE, p[:5], chen_law(p[:5]))
    assert fit_direction("x", SIZE, p[:6], chen_law(p[:6]), starts=4).loo_rmse is None


def fake_fit(name, k, alpha, c, beta, m):
    return Fit(name, 1000, from_chen(k, alpha, 0.0, c - 1.0, 1.0, beta, m, 1000), 0.0, 7)


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
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.4])
    fit = fit_direction("x", 1000, p, chen_law(p), starts=4)
    assert fit.p_range == (0.05, 0.4)
    save_fits([fit], tmp_path / "fit.json")
    assert load_fits(tmp_path / "fit.json") == [fit]


def test_weights_recipe_replaces_every_all_directions_sampling(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "r", "sampling": {"kind": "temperature", "params": {"temperature": 5.0}},
        "stages": [{"name": "hrl", "directions": ["group:hrl"], "sampling": {"kind": "proportional"}},
                   {"name": "mix", "directions": ["all"], "sampling": {"kind": "uniform"}},
                   {"name": "tail"}]}))
    out = tmp_path / "w.yaml"
    kept = write_recipe_with_weights(str(recipe), {"a": 0.25, "b": 0.75}, out)
    data = yaml.safe_load(out.read_text())
    weights = {"kind": "weights", "params": {"weights": {"a": 0.25, "b": 0.75}}}
    assert kept == ["hrl"] and "keep their own sampling: hrl" in out.read_text()
    assert data["sampling"] == weights and data["stages"][1]["sampling"] == weights
    assert data["stages"][0]["sampling"] == {"kind": "proportional"} and "sampling" not in data["stages"][2]
