"""Temperature mixing of direction sizes: the static balancing rule other parts build on (the
tokenizer's training sample, the temperature sampler, the schedules)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def temperature_probs(sizes: Sequence[float], tau: float) -> np.ndarray:
    """p_i ∝ D_i^(1/τ), computed in log space so τ→∞ and huge sizes stay exact."""
    d = np.asarray(sizes, dtype=np.float64)
    if np.any(d <= 0):
        raise ValueError(f"direction sizes must be positive, got {list(d)}")
    logits = np.log(d) / float(tau)
    logits -= logits.max()
    w = np.exp(logits)
    return w / w.sum()
