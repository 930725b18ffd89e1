"""Random generators keyed by integer tuples: data order and every policy's draws are pure
functions of (seed, stage, chunk, purpose...), never of a generator's hidden history."""

from __future__ import annotations

import numpy as np


def rng_for(*keys: int) -> np.random.Generator:
    """An independent generator for a tuple of integer keys (seed, stage, chunk, purpose...)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys])))
