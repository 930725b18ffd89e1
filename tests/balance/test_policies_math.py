import math

import numpy as np
import pytest

from pipeline.balance.bandit import exp3_probs
from pipeline.balance.dro import chi2_weights, cvar_ratios
from pipeline.balance.schedules import ScheduleParams, tau_at
from pipeline.balance.static import build_sampler
from pipeline.config import SamplingConfig
from pipeline.core.mixing import temperature_probs

NAMES = ["hi1", "hi2", "lo1", "lo2"]
SIZES = [8000, 4000, 1000, 500]


def policy(kind, params=None, every=1):
    return build_sampler(SamplingConfig(kind, params or {}, every=every), NAMES, SIZES, horizon=100)


@pytest.mark.parametrize("schedule,step,expected", [
    ("linear", 0, 5.0), ("linear", 50, 3.0), ("linear", 100, 1.0), ("linear", 150, 1.0),
    ("cosine", 50, 3.0), ("cosine", 25, 1 + 4 * 0.5 * (1 + math.cos(math.pi / 4))),
    ("exponential", 50, math.sqrt(5.0)), ("step", 49, 5.0), ("step", 50, 1.0),
])
def test_temperature_schedules_by_hand(schedule, step, expected):
    p = ScheduleParams(start=5.0, end=1.0, schedule=schedule, horizon=100)
    assert tau_at(step, p) == pytest.approx(expected)


def test_schedule_policy_is_a_pure_function_of_the_step():
    s = policy("temperature_schedule", {"start": 5.0, "end": 1.0})
    np.testing.assert_allclose(s.probabilities(50), temperature_probs(SIZES, 3.0))
    np.testing.assert_allclose(s.probabilities(0), temperature_probs(SIZES, 5.0))
    assert s.log_values() == {"tau": 5.0}


def test_cvar_mass_by_hand():
    mass = np.array([0.5, 0.3, 0.15, 0.05])
    score = np.array([1.0, 2.0, 4.0, 3.0])  # worst first: lo1 (0.15), lo2 (0.05), hi2 (0.3), hi1
    h = cvar_ratios(score, mass, alpha=0.4, floor=0.1)
    # lo1 and lo2 (mass 0.2 < 0.4) get 1/α; hi2 is the boundary: (1 - 0.2/0.4) / 0.3
    np.testing.assert_allclose(h, [0.1, (1 - 0.5) / 0.3, 2.5, 2.5])
    worst = mass * h
    assert worst[1:].sum() == pytest.approx(1.0)  # the worst α of the mass, reweighted, is a distribution


def test_cvar_policy_raises_the_worst_direction():
    s = policy("cvar_dro", {"alpha": 0.3, "ema": 1.0})
    s.observe_train(1, np.array([2.0, 2.0, 5.0, 2.0]), np.ones(4))
    q = s.probabilities(1)
    h = cvar_ratios(np.array([2.0, 2.0, 5.0, 2.0]), s.data_p, 0.3, 0.1)
    np.testing.assert_allclose(q, s.data_p * h / (s.data_p * h).sum())
    assert h[2] == pytest.approx(1 / 0.3) and q[2] > 3 * s.data_p[2]


def test_chi2_constraint_and_clamp_hold():
    p = np.array(SIZES) / sum(SIZES)
    loss = np.array([2.0, 2.5, 4.0, 6.0])
    for rho in (0.05, 0.2, 1.0):
        q = chi2_weights(p, loss, rho, min_prob=0.2, tol=1e-6)
        assert 0.5 * (p * (q / p - 1) ** 2).sum() == pytest.approx(rho, abs=1e-4)
        assert np.all(q / p >= 0.2 * p.sum() / (np.maximum(q / p, 0.2) * p).sum() - 1e-12)
        assert q.sum() == pytest.approx(1.0) and q[3] > p[3] and q[0] < p[0]


def test_chi2_policy_updates_every_virtual_epoch_after_warmup():
    """warmup 1: one virtual epoch (steps 1-5) on p, as the reference's `epoch <= warmup_epochs`
    keeps epoch 1 on p; the q computed from epoch 1's losses drives epoch 2 (from step 6)."""
    s = policy("chi2_dro", {"warmup": 1, "ema": 0.1, "clamp_q_to_min": False}, every=5)
    losses = np.array([2.0, 2.0, 3.0, 6.0])
    for step in range(1, 6):
        assert s.probabilities(step - 1) is not None
        np.testing.assert_allclose(s.probabilities(step - 1), s.data_p)  # what step `step` trains on
        s.observe_train(step, losses, np.ones(4))
    q = s.probabilities(5)
    assert q[3] > s.data_p[3] and 0.5 * (s.data_p * (q / s.data_p - 1) ** 2).sum() == pytest.approx(0.05, abs=1e-4)
    s2 = policy("chi2_dro", {"warmup": 2, "clamp_q_to_min": False}, every=5)
    for step in range(1, 11):
        s2.observe_train(step, losses, np.ones(4))
        if step == 5:
            np.testing.assert_allclose(s2.probabilities(5), s2.data_p)  # epoch 2 still on p
    np.testing.assert_allclose(s2.probabilities(10), q)


def test_chi2_baselines_above_every_loss_fall_back_to_the_raw_losses():
    """max(ℓ − b) <= 0 made the bracket invert (divergence 4.7 against ρ = 0.05); the reference
    then weighs the raw EMA losses, so the constraint holds and q equals the raw-loss solution."""
    p = np.array(SIZES) / sum(SIZES)
    loss = np.array([2.0, 2.5, 4.0, 6.0])
    base = {n: 10.0 for n in NAMES}
    s = policy("chi2_dro", {"warmup": 1, "ema": 1.0, "baselines": base, "clamp_q_to_min": False}, every=1)
    s.observe_train(1, loss, np.ones(4))
    q = s.probabilities(1)
    assert 0.5 * (p * (q / p - 1) ** 2).sum() == pytest.approx(0.05, abs=1e-4)
    np.testing.assert_allclose(q, chi2_weights(p, loss, 0.05, 0.2))
    with pytest.raises(ValueError, match="positive loss"):
        chi2_weights(p, loss - 10.0, 0.05, 0.2)


def test_chi2_clamp_q_to_min_by_hand():
    """clamp_q_to_min: q = max(q, min p) / Σ (chi_square_resample.py, on in the paper's script)."""
    p = np.array(SIZES) / sum(SIZES)
    loss = np.array([9.0, 2.0, 2.0, 2.0])
    raw = chi2_weights(p, loss, 1.0, 0.0)
    s = policy("chi2_dro", {"warmup": 1, "ema": 1.0, "rho": 1.0, "min_prob": 0.0}, every=1)
    s.observe_train(1, loss, np.ones(4))
    expected = np.maximum(raw, p.min()) / np.maximum(raw, p.min()).sum()
    assert raw.min() < p.min()  # the clamp binds here
    np.testing.assert_allclose(s.probabilities(1), expected)
    assert s.probabilities(1).min() >= p.min() / np.maximum(raw, p.min()).sum() - 1e-15


def test_chi2_history_restarts_each_virtual_epoch():
    """clear_history: epoch 2's EMA starts from its first loss, not from epoch 1's average."""
    s = policy("chi2_dro", {"ema": 0.5}, every=2)
    s.observe_train(1, np.array([1.0, 1.0, 1.0, 1.0]), np.ones(4))
    s.observe_train(2, np.array([3.0, 3.0, 3.0, 3.0]), np.ones(4))  # EMA 2.0, epoch ends
    s.observe_train(3, np.array([5.0, 5.0, 5.0, np.nan]), np.ones(4))  # lo2 unseen: keeps 2.0
    np.testing.assert_allclose(s.loss, [5.0, 5.0, 5.0, 2.0])


def test_group_dro_update_on_a_scripted_sequence():
    """q ← q·exp(η ℓ), ℓ the step's loss or, for an absent direction, its last observed one."""
    s = policy("group_dro", {"eta": 0.5})
    seq = [np.array([1.0, 2.0, np.nan, 3.0]), np.array([1.0, np.nan, 4.0, 3.0])]
    signals = [[1.0, 2.0, 0.0, 3.0],  # lo1 never seen yet: 0
               [1.0, 2.0, 4.0, 3.0]]  # hi2 absent: its last loss, 2.0
    log_q = np.log(np.full(4, 0.25))
    for step, (loss, sig) in enumerate(zip(seq, signals), 1):
        s.observe_train(step, loss, np.ones(4))
        log_q = log_q + 0.5 * np.array(sig)
        expected = np.exp(log_q) / np.exp(log_q).sum()
        np.testing.assert_allclose(s.probabilities(step), expected, atol=1e-12)


@pytest.mark.parametrize("kind", ["group_dro", "excess_group_dro"])
def test_group_dro_direction_at_a_tiny_weight_recovers(kind):
    """Under `apply: sample` a direction with q = 0.001 is almost never drawn. Its loss is the
    highest: it must still become the largest weight (with signal 0 when absent it never did)."""
    s = policy(kind, {"eta": 0.01, "reference": {n: 0.0 for n in NAMES}, "smoothing": 0.0} if kind != "group_dro" else {"eta": 0.01})
    s.log_q = np.log(np.array([0.333, 0.333, 0.333, 0.001]))
    s.observe_train(1, np.array([2.0, 2.0, 2.0, 5.0]), np.ones(4))  # lo2 drawn once
    for step in range(2, 400):
        s.observe_train(step, np.array([2.0, 2.0, 2.0, np.nan]), np.array([1.0, 1.0, 1.0, 0.0]))
    q = s.probabilities(400)
    assert q.argmax() == 3
    # by hand: log q_lo2 − log q_hi1 = log(0.001 / 0.333) + 399 · 0.01 · (5 − 2)
    assert math.log(q[3] / q[0]) == pytest.approx(math.log(0.001 / 0.333) + 399 * 0.03, abs=1e-9)


def test_excess_loss_update_uses_the_reference_and_smoothing():
    ref = {"hi1": 1.0, "hi2": 3.0, "lo1": 1.0, "lo2": 1.0}
    s = policy("excess_group_dro", {"eta": 1.0, "reference": ref, "smoothing": 0.1})
    loss = np.array([2.0, 2.0, 1.5, 1.0])
    s.observe_train(1, loss, np.ones(4))
    excess = np.maximum(loss - np.array([1.0, 3.0, 1.0, 1.0]), 0)  # [1, 0, 0.5, 0]
    a = np.exp(excess) / np.exp(excess).sum()
    np.testing.assert_allclose(s.probabilities(1), 0.9 * a + 0.1 / 4)


def test_exp3_probabilities_sum_to_one_and_respect_the_floor():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = exp3_probs(rng.normal(scale=30, size=6), gamma=0.3)
        assert p.sum() == pytest.approx(1.0) and np.all(p >= 0.3 / 6 - 1e-12)
    s = policy("exp3", {"gamma": 0.2})
    for step in range(1, 60):  # lo1's loss keeps dropping fast, the others stall
        loss = np.array([3.0, 3.0, 5.0 * 0.97 ** step, 3.0])
        s.observe_train(step, loss, np.full(4, 10.0))
    p = s.probabilities(60)
    assert p.argmax() == 2 and p.min() >= 0.2 / 4 - 1e-12 and p.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("kind,params", [("cvar_dro", {"alpha": 0.5}), ("group_dro", {}), ("chi2_dro", {}),
                                         ("exp3", {}), ("excess_group_dro", {"reference": {"hi1": 1.0}})])
def test_state_round_trip_continues_identically(kind, params):
    rng = np.random.default_rng(1)
    seq = [rng.uniform(1, 5, size=4) for _ in range(30)]
    a = policy(kind, params, every=3)
    b = policy(kind, params, every=3)
    for step, loss in enumerate(seq[:12], 1):
        a.observe_train(step, loss, np.ones(4))
        b.observe_train(step, loss, np.ones(4))
    c = policy(kind, params, every=3)
    c.load_state_dict(b.state_dict())
    for step, loss in enumerate(seq[12:], 13):
        a.observe_train(step, loss, np.ones(4))
        c.observe_train(step, loss, np.ones(4))
        np.testing.assert_array_equal(a.probabilities(step), c.probabilities(step))
