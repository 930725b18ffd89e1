import numpy as np
import pytest

from pipeline.balance.static import build_sampler
from pipeline.config import SamplingConfig
from pipeline.core.mixing import temperature_probs
from pipeline.core.typed_yaml import ConfigError

SIZES = [100_000, 20_000, 3_000, 50]
NAMES = ["a", "b", "c", "d"]


def test_temperature_one_is_proportional():
    p = temperature_probs(SIZES, 1.0)
    np.testing.assert_allclose(p, np.array(SIZES) / sum(SIZES), rtol=1e-12)


def test_huge_temperature_is_uniform():
    # p_i - 1/N ≈ (ln D_i - mean ln D) / (N τ): within 1e-6 while sizes span less than e^4.
    p = temperature_probs([16_000, 15_000, 6_000, 2_000], 1e6)
    assert np.max(np.abs(p - 0.25)) < 1e-6
    # and exactly the first-order deviation for a wide spread
    wide = temperature_probs(SIZES, 1e6)
    logs = np.log(SIZES)
    np.testing.assert_allclose(wide - 0.25, (logs - logs.mean()) / (4 * 1e6), atol=1e-11)


def test_temperature_five_by_hand():
    p = temperature_probs([1000, 10], 5.0)
    w = np.array([1000 ** 0.2, 10 ** 0.2])
    np.testing.assert_allclose(p, w / w.sum())


@pytest.mark.parametrize("kind,params", [("proportional", {}), ("uniform", {}), ("temperature", {"temperature": 5}),
                                         ("weights", {"weights": {"a": 1, "b": 2, "c": 3, "d": 4}})])
def test_empirical_frequencies_within_3_sigma(kind, params):
    s = build_sampler(SamplingConfig(kind, params), NAMES, SIZES)
    s.reseed(7)
    p = s.probabilities(0)
    n = 100_000
    draws = s.draw(n, p)
    freq = np.bincount(draws, minlength=4)
    sigma = np.sqrt(n * p * (1 - p))
    assert np.all(np.abs(freq - n * p) <= 3 * sigma + 1e-9), (freq, n * p, sigma)


def test_state_round_trip_reproduces_next_draws():
    s = build_sampler(SamplingConfig("temperature", {"temperature": 3}), NAMES, SIZES)
    s.reseed(11, 2)
    s.draw(500)
    state = s.state_dict()
    expected = s.draw(1000)
    t = build_sampler(SamplingConfig("temperature", {"temperature": 3}), NAMES, SIZES)
    t.load_state_dict(state)
    np.testing.assert_array_equal(t.draw(1000), expected)


def test_state_for_other_directions_is_refused():
    s = build_sampler(SamplingConfig("uniform", {}), NAMES, SIZES)
    t = build_sampler(SamplingConfig("uniform", {}), NAMES[:3], SIZES[:3])
    with pytest.raises(ValueError, match="sampler state is for uniform"):
        t.load_state_dict(s.state_dict())


def test_weights_must_cover_the_stage():
    with pytest.raises(ConfigError, match="missing \\['d'\\]"):
        build_sampler(SamplingConfig("weights", {"weights": {"a": 1, "b": 1, "c": 1}}), NAMES, SIZES)
