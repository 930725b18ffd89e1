"""Optional TensorBoard event files beside metrics.jsonl, so `tensorboard --logdir RUN_DIR` shows
the curves while a run trains. Without the `tensorboard` package (the `tensorboard` extra) every
call is a no-op: metrics.jsonl stays the record, this is only a view."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested dicts become 'a/b/c' tags; only finite-or-not numbers are kept (strings, lists and
    None, e.g. a stage name or a grad-cosine matrix, have no scalar curve)."""
    out: dict[str, float] = {}
    for key, v in values.items():
        tag = f"{prefix}{key}"
        if isinstance(v, Mapping):
            out.update(flatten(v, tag + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[tag] = float(v)
    return out


class TensorBoardLog:
    """`scalars(step, row)` for each metrics.jsonl row, on rank 0. On resume pass `purge_step`
    (the checkpoint's step) so TensorBoard hides what the killed run logged after it."""

    def __init__(self, run_dir: str | Path, subdir: str = "tensorboard", purge_step: int | None = None) -> None:
        self.path = Path(run_dir) / subdir
        self._writer: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch raises this when the tensorboard package is absent
            return
        self._writer = SummaryWriter(log_dir=str(self.path), purge_step=purge_step)

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def scalars(self, step: int, values: Mapping[str, Any], prefix: str = "") -> None:
        if self._writer is None:
            return
        for tag, v in flatten({k: v for k, v in values.items() if k != "step"}, prefix).items():
            self._writer.add_scalar(tag, v, global_step=step)
        self._writer.flush()  # a reader watching a live run sees every log line

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
