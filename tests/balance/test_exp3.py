"""EXP3 (Kreutzer et al. 2021) on scripted losses, against values worked out by hand from the rule:
reward = relative loss drop, scaled by the history's 20th/80th percentiles; log w += γ r / K for
every observed direction (full information: the batches mix every direction)."""

import math

import numpy as np
import pytest

from pipeline.balance.static import build_sampler
from pipeline.config import SamplingConfig

NAN = float("nan")


def exp3(names, params, every):
    return build_sampler(SamplingConfig("exp3", params, every=every), names, [1] * len(names))


def test_exp3_trace_by_hand():
    s = exp3(["a", "b", "c"], {"gamma": 0.3, "window": 4}, every=2)
    feed = [
        ([2.0, 4.0, NAN], [10, 10, 0]), ([2.0, 4.0, 3.0], [30, 10, 10]),  # update 1: first losses, no reward
        ([1.8, 3.0, NAN], [10, 10, 0]), ([1.8, 3.0, NAN], [10, 10, 0]),  # update 2: c not observed
        ([1.62, 2.7, 2.4], [1, 1, 1]), ([1.62, 2.7, 2.4], [1, 1, 1]),  # update 3
    ]
    expected_log_w = {
        2: [0.0, 0.0, 0.0],
        # raw progress a 0.1, b 0.25; history empty: reward 0.5 each; + 0.3 * 0.5 / 3
        4: [0.05, 0.05, 0.0],
        # raw a 0.1, b 0.1, c (3 - 2.4) / 3 = 0.2 against c's last loss (3.0, from update 1);
        # history [0.1, 0.25]: q20 = 0.13, q80 = 0.22 -> rewards 0, 0, 0.07 / 0.09 = 7/9
        6: [0.05, 0.05, 0.3 * (7 / 9) / 3],
    }
    for step, (loss, tok) in enumerate(feed, 1):
        s.observe_train(step, np.array(loss), np.array(tok, dtype=float))
        if step in expected_log_w:
            w = np.exp(expected_log_w[step])
            np.testing.assert_allclose(s.probabilities(step), 0.7 * w / w.sum() + 0.1, atol=1e-12)
    # the window keeps the last 4 raw rewards
    np.testing.assert_allclose(s.history, [0.25, 0.1, 0.1, 0.2])
    assert s.log_values()["reward"] == {"a": 0.0, "b": 0.0, "c": pytest.approx(7 / 9, abs=1e-5)}


def test_exp3_concentrates_on_the_direction_with_twice_the_progress():
    """Mixed batches observe every direction each interval. One direction's loss drops twice as
    fast as the others' (noisy): EXP3 must put at least 0.85 of the mass on it within 3,000
    updates (the ceiling is 1 − γ + γ/K = 0.925). Dividing each reward by p_i, as for a single
    pulled arm, gives probability matching instead (the bug this guards against)."""
    names = ["d0", "d1", "d2", "d3"]
    s = exp3(names, {"gamma": 0.1}, every=1)
    rng = np.random.default_rng(0)
    rate = np.array([0.001, 0.001, 0.002, 0.001])
    log_loss = np.log(np.full(4, 6.0))
    best = 0.0
    for step in range(1, 3001):
        log_loss += np.log1p(-rate * rng.uniform(0.0, 2.0, size=4))
        s.observe_train(step, np.exp(log_loss), np.full(4, 500.0))
        best = max(best, float(s.probabilities(step)[2]))
    assert best >= 0.85
    assert s.probabilities(3000)[2] >= 0.85


def test_exp3_missed_direction_keeps_weight_and_last_loss():
    s = exp3(["a", "b"], {"gamma": 0.2}, every=1)
    s.observe_train(1, np.array([2.0, 2.0]), np.ones(2))
    s.observe_train(2, np.array([1.0, NAN]), np.array([1.0, 0.0]))
    assert s.log_w[1] == 0.0 and s.prev[1] == 2.0
    assert math.isclose(s.log_w[0], 0.2 * 0.5 / 2)
