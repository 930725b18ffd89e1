import numpy as np
import pytest

from pipeline.core.permutation import KeyedPermutation
from pipeline.core.rng import rng_for


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 17, 255, 256, 257, 1000, 4097, 65537])
def test_every_position_maps_to_a_distinct_element_of_the_domain(n):
    perm = KeyedPermutation(n, rng_for(1, 2, 3))
    out = perm[np.arange(n)]
    assert sorted(out.tolist()) == list(range(n))


def test_the_order_is_a_pure_function_of_the_generator_and_is_not_the_identity():
    a = KeyedPermutation(10_000, rng_for(7, 0, 1))[np.arange(10_000)]
    b = KeyedPermutation(10_000, rng_for(7, 0, 1))[np.arange(10_000)]
    c = KeyedPermutation(10_000, rng_for(7, 0, 2))[np.arange(10_000)]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # a shuffle, not a shifted identity: neighbours land far apart and about as often up as down
    assert (a == np.arange(10_000)).sum() < 20
    assert 0.4 < (np.diff(a) > 0).mean() < 0.6
    # the first tenth of the order draws from the whole range
    assert np.histogram(a[:1000], bins=10, range=(0, 10_000))[0].min() > 60


def test_positions_can_be_asked_for_in_any_order_and_in_pieces():
    perm = KeyedPermutation(5000, rng_for(3))
    whole = perm[np.arange(5000)]
    idx = np.array([4999, 0, 17, 17, 2500])
    assert np.array_equal(perm[idx], whole[idx])
    assert np.array_equal(np.concatenate([perm[np.arange(0, 1234)], perm[np.arange(1234, 5000)]]), whole)


def test_positions_outside_the_domain_are_refused():
    perm = KeyedPermutation(10, rng_for(0))
    with pytest.raises(IndexError):
        perm[np.array([10])]
    with pytest.raises(ValueError):
        KeyedPermutation(0, rng_for(0))


def test_a_hundred_million_pairs_need_no_array_of_that_size():
    perm = KeyedPermutation(100_000_000, rng_for(5))
    assert perm.half == 14  # 2^28 covers 1e8: each half is 14 bits, the state is six keys
    got = perm[np.arange(100_000)]
    assert got.min() >= 0 and got.max() < 100_000_000 and len(np.unique(got)) == 100_000
