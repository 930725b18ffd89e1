"""What the loop logs: loss sums per direction since the last log row and the last dev evaluation
(`LossSums`, part of each rank's checkpoint), and the metrics.jsonl row built from them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.distill.lssd import FULL, GATE, KD, ROWS, TAUGHT, TOKENS
from pipeline.engine.collectives import Dist
from pipeline.train.stage_setup import StageRuntime


class LossSums:
    """The step sums per direction of the corpus (rows: `distill.lssd.ROWS`): since the last log
    row, and since the last dev evaluation (without them saved, the first averages after a resume
    would cover fewer steps than the uninterrupted run's)."""

    def __init__(self, n_dirs: int) -> None:
        self.log = torch.zeros(ROWS, n_dirs, dtype=torch.float64)
        self.eval = torch.zeros(ROWS, n_dirs, dtype=torch.float64)

    def add(self, step_acc: torch.Tensor) -> None:
        self.log += step_acc
        self.eval += step_acc

    def load(self, log: torch.Tensor, eval_: torch.Tensor) -> None:
        """Saved sums; a checkpoint from before LSSD's rows holds the first three."""
        for mine, saved in ((self.log, log), (self.eval, eval_)):
            mine.zero_()
            mine[: len(saved)].copy_(saved)

    def take_log(self) -> torch.Tensor:
        out = self.log.clone()
        self.log.zero_()
        return out

    def take_eval(self) -> torch.Tensor:
        out = self.eval.clone()
        self.eval.zero_()
        return out


def log_row(*, step: int, stage_step: int, tokens_total: int, skipped: int, names: list[str], stage: StageRuntime, acc: torch.Tensor,
            memory: torch.Tensor, dist: Dist, lr: float, grad_norm: float | None, elapsed: float, steps: int,
            probe_s: float | None, teacher_steps: np.ndarray | None = None,
            held: list[dict[str, int]] | None = None) -> dict[str, Any]:
    """One metrics.jsonl row: `acc` the loss sums over ranks since the last row, `memory` every
    rank's [peak host, peak GPU, host] MB, `elapsed` the training seconds of its `steps` steps,
    `held` every rank's `Engine.held_bytes` before this step's optimizer step (None: not measured,
    a row at a stage end between log steps)."""
    assert stage.stream.p is not None
    tokens = acc[TOKENS]
    tot = float(tokens.sum())
    record: dict[str, Any] = {
        "step": step,
        "stage": stage.progress.stage.name,
        "lr": lr,
        "loss": float(acc[0].sum()) / max(1.0, tot),
        "nll": float(acc[1].sum()) / max(1.0, tot),
        "grad_norm": grad_norm,
        "tokens_per_s": tot / max(elapsed, 1e-9),
        "step_s": elapsed / max(1, steps),
        **({"probe_s": round(probe_s, 3)} if probe_s is not None else {}),
        "tokens": tokens_total,
        "skipped_steps": skipped,
        "peak_host_mb": [round(float(x), 1) for x in memory[:, 0]],
        "host_mb": [round(float(x), 1) for x in memory[:, 2]],
        **({"peak_gpu_mb": [round(float(x), 1) for x in memory[:, 1]]} if dist.device.type == "cuda" else {}),
        **({"held_bytes": held} if held is not None else {}),
        "directions": {
            n: {"loss": float(acc[0, i] / tokens[i]), "nll": float(acc[1, i] / tokens[i]), "tokens": int(tokens[i])}
            for i, n in enumerate(names) if tokens[i] > 0
        },
        "p": {names[i]: round(float(x), 6) for i, x in zip(stage.stream.dir_ids, stage.stream.p)},
    }
    if stage.apply != "sample":
        w = stage.policy.probabilities(stage_step)
        record["loss_weights"] = {names[i]: round(float(x), 6) for i, x in zip(stage.stage_ids, w)}
    if stage.distill.method == "lssd" and teacher_steps is not None:
        record["distill"] = {
            n: {"teacher_step": int(teacher_steps[i]) if teacher_steps[i] >= 0 else None,
                "kd": round(float(acc[KD, i] / acc[TAUGHT, i]), 5) if acc[TAUGHT, i] else None,
                "gate": round(float(acc[GATE, i] / acc[TAUGHT, i]), 5) if acc[TAUGHT, i] else None,
                "gated_full": round(float(acc[FULL, i] / acc[TAUGHT, i]), 5) if acc[TAUGHT, i] else None,
                "taught": round(float(acc[TAUGHT, i] / tokens[i]), 5)}
            for i, n in enumerate(names) if tokens[i] > 0}
    extra = stage.policy.log_values()
    if extra:
        record["policy"] = extra
    return record
