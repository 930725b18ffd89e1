"""What `mmtc run` and `mmtc data check` refuse in raw splits before any tokenizer, and the message
for evaluation pairs that filtering would drop."""

from __future__ import annotations

from collections import Counter

import numpy as np

from pipeline.config import DataConfig
from pipeline.data.corpus import RawSplit
from pipeline.data.filters import empty_mask


def check_raw(raw: dict[tuple[str, str], RawSplit], data: DataConfig) -> list[str]:
    """What `mmtc run` refuses before any tokenizer: a train split with no usable pair (an empty
    file, a side that is all blank) and, unless data.allow_eval_drops, dev/test pairs that would
    be dropped as empty or invalid. `mmtc data check` runs the same function."""
    out = []
    for (n, split), r in raw.items():
        nonempty = empty_mask(r.src, r.tgt)
        if split == "train":
            msg = train_unusable(n, r.origin, len(r.src), sum(r.dropped.values()), int(nonempty.sum()))
            out += [msg] if msg else []
        elif split != "train" and not data.allow_eval_drops and (not nonempty.all() or r.dropped):
            none = np.zeros(len(r.src), dtype=bool)
            out.append(eval_drop_message(n, split, r, ~nonempty, none, none,
                                          Counter({**({"empty": int((~nonempty).sum())} if not nonempty.all() else {}),
                                                   **r.dropped})))
    return out


def train_unusable(name: str, origin: str, valid: int, invalid: int, nonempty: int) -> str | None:
    """The refusal for a train split with no usable pair (None when it has one): from its counts,
    so the streaming passes and the in-memory check say the same."""
    if nonempty:
        return None
    what = "the files hold no lines" if not valid and not invalid else (
        f"all {valid} are empty on a side" + (f", {invalid} invalid" if invalid else ""))
    return f"{name} train ({origin}): no pairs left after filtering ({what})"


def eval_drop_message(name: str, split: str, rs: RawSplit, empty: np.ndarray, too_long: np.ndarray,
                       bad_ratio: np.ndarray, drops: Counter[str]) -> str:
    parts = []
    for reason, mask in (("empty", empty), ("too_long", too_long), ("bad_ratio", bad_ratio)):
        if mask.any():
            where = [rs.lines[i] for i in np.flatnonzero(mask)[:5]]
            parts.append(f"{reason}: {int(mask.sum())} (lines {', '.join(map(str, where))}"
                         f"{', ...' if mask.sum() > 5 else ''})")
    if drops.get("invalid_utf8"):
        parts.append(f"invalid_utf8: {drops['invalid_utf8']}")
    return (f"{name} {split} ({rs.origin}): {sum(drops.values())} pairs would be dropped: {'; '.join(parts)}. "
            "Evaluation sets are not filtered silently: fix the data or set data.allow_eval_drops: true")
