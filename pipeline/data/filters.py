"""Pure pair filters. Each returns a keep-mask and counts per reason, so nothing vanishes unseen."""

from __future__ import annotations

from collections import Counter

import numpy as np

REASONS = ("invalid_utf8", "empty", "too_long", "bad_ratio")


def empty_mask(src: list[str], tgt: list[str]) -> np.ndarray:
    return np.fromiter((bool(s) and bool(t) for s, t in zip(src, tgt)), dtype=bool, count=len(src))


def length_mask(
    src_lens: np.ndarray, tgt_lens: np.ndarray, max_len: int, max_ratio: float
) -> tuple[np.ndarray, np.ndarray]:
    """(too_long, bad_ratio) masks over token lengths; a pair is counted under its first reason."""
    longer = np.maximum(src_lens, tgt_lens)
    shorter = np.maximum(np.minimum(src_lens, tgt_lens), 1)
    too_long = longer > max_len
    bad_ratio = ~too_long & (longer > max_ratio * shorter)
    return too_long, bad_ratio


def count(masks: dict[str, np.ndarray]) -> Counter[str]:
    return Counter({k: int(m.sum()) for k, m in masks.items() if m.any()})
