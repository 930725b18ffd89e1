"""How a step's token losses are weighted: per-direction factors on summed token losses.

DeepSpeed then divides the loss by world × accum, so every factor carries `n` = world × accum.
"""

from __future__ import annotations

import numpy as np


def direction_scales(apply: str, n: int, weights: np.ndarray, tokens: np.ndarray, share: np.ndarray) -> np.ndarray:
    """`weights`: the policy's p per direction (0 outside the stage); `tokens`: the step's target
    tokens per direction, all ranks; `share`: each direction's share of the batch mix.

    sample: every token counts the same, 1 / (the step's target tokens). loss_weight: each
    direction's mean token loss weighted by p, over the directions in the step. token_weight:
    each token weighted by p_d / share_d, normalised over the step's tokens (DoReMi's proxy loss).
    """
    if apply == "sample":
        return np.full(len(tokens), n / max(1.0, float(tokens.sum())))
    if apply == "token_weight":
        w = weights / np.maximum(share, 1e-300)
        return n * w / max(float((w * tokens).sum()), 1e-300)
    w = np.where(tokens > 0, weights, 0.0)
    w = w / w.sum() if w.sum() > 0 else np.where(tokens > 0, 1.0, 0.0) / max(1, (tokens > 0).sum())
    return n * w / np.maximum(tokens, 1)
