"""LSSD's teachers: per direction, the weights at the evaluation where that direction's dev loss was
best so far (its "language-specific best checkpoint", Huang et al. 2022).

A snapshot is taken once per evaluation, however many directions improve at it, and is shared by
them; a snapshot that no direction points at any more is dropped. Snapshots are parameter
dictionaries run through one structural copy of the model with `torch.func.functional_call`, so N
teachers cost N sets of weights and no more modules. They are kept in bf16 (fp32 on request), on
the training device or in host memory (`placement: cpu`, moved in for each forward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from pipeline.config import DistillConfig
from pipeline.engine.ds_engine import Engine
from pipeline.model.transformer import Seq2SeqTransformer

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class _TargetLogits(nn.Module):
    """The model with `target_logits` as its forward, for `functional_call`."""

    def __init__(self, model: Seq2SeqTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor) -> torch.Tensor:
        return self.model.target_logits(src, tgt_in, tgt_out)


@dataclass
class TeacherUpdate:
    """What one evaluation changed: the directions whose teacher is now the current weights."""

    step: int
    directions: list[str]
    snapshots: int  # distinct snapshots held afterwards
    bytes: int = 0  # their total size
    best: dict[str, float] = field(default_factory=dict)


class TeacherBank:
    """Per corpus direction: its best dev loss, the step of its teacher, and the teacher itself."""

    def __init__(self, names: list[str], runner: Seq2SeqTransformer, cfg: DistillConfig, device: torch.device) -> None:
        self.names = names
        self.dtype = DTYPES[cfg.snapshot_dtype]
        self.home = torch.device("cpu") if cfg.placement == "cpu" else device
        self.device = device
        # The structure the snapshots run through: eval mode (no dropout), no gradients, never updated.
        self.runner = runner.to(device=device, dtype=self.dtype).eval()
        for p in self.runner.parameters():
            p.requires_grad_(False)
            # Its own weights are never used (every call passes a snapshot's): hold none of them.
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)
        self._call = _TargetLogits(self.runner)
        self.best = np.full(len(names), math.inf)
        self.teacher_step = np.full(len(names), -1, dtype=np.int64)  # -1: no teacher yet
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}  # evaluation step -> weights
        self.when = cfg.when
        self.last_eval = -1  # the step of the latest evaluation seen

    # -- selection --------------------------------------------------------------------------------
    def observe(self, step: int, dev: dict[str, float], watched: list[str], engine: Engine) -> TeacherUpdate | None:
        """After an evaluation at `step`: each watched direction whose dev loss beats its best takes
        the current weights as its teacher. Every rank calls this with the same losses."""
        self.last_eval = step
        improved = [n for n in watched if dev[n] < self.best[self.names.index(n)]]
        if not improved:
            return None
        self.snapshots[step] = engine.snapshot_weights(self.dtype, self.home)
        for n in improved:
            i = self.names.index(n)
            self.best[i], self.teacher_step[i] = dev[n], step
        live = set(int(s) for s in self.teacher_step if s >= 0)
        for s in [s for s in self.snapshots if s not in live]:
            del self.snapshots[s]
        return TeacherUpdate(step, improved, len(self.snapshots), self.nbytes(), {n: dev[n] for n in improved})

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for snap in self.snapshots.values() for t in snap.values())

    def teaching(self, when: str | None = None) -> np.ndarray:
        """Bool per direction: whether it distils now. Under `when: stalled` (their
        `whether_to_online_distillation`: the language's best epoch is before the latest validated
        one) a direction that improved at the latest evaluation trains on the plain loss until an
        evaluation finds it stalled."""
        has = self.teacher_step >= 0
        return has if (when or self.when) == "always" else has & (self.teacher_step < self.last_eval)

    def has_teacher(self, direction: torch.Tensor, when: str | None = None) -> torch.Tensor:
        """Bool per row: whether the row's direction distils now (`teaching`; `when`: the stage's rule)."""
        return torch.from_numpy(self.teaching(when))[direction]

    # -- the teacher forward ----------------------------------------------------------------------
    @torch.no_grad()
    def distributions(self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
                      direction: torch.Tensor, when: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row through its own direction's teacher: the teacher distribution [N, V] (float32)
        of the batch's N real target tokens (the order the student's forward scores them in; zero
        rows where the row's direction has no teacher), and a bool [N] saying which have one.
        One forward per distinct snapshot over its rows, not one per direction over the batch."""
        real = tgt_out.ne(self.runner.pad_id)
        n = int(real.sum())
        position = torch.full(tgt_out.shape, -1, dtype=torch.long, device=tgt_out.device)
        position[real] = torch.arange(n, device=tgt_out.device)
        q = torch.zeros(n, self.runner.vocab_size, dtype=torch.float32, device=tgt_out.device)
        covered = torch.zeros(n, dtype=torch.bool, device=tgt_out.device)
        steps = np.where(self.teaching(when), self.teacher_step, -1)[direction.cpu().numpy()]
        for s in sorted(set(int(x) for x in steps if x >= 0)):
            rows = torch.from_numpy(np.flatnonzero(steps == s)).to(src.device)
            weights = {f"model.{k}": v.to(self.device, non_blocking=True) for k, v in self.snapshots[s].items()}
            sub_out = tgt_out.index_select(0, rows)
            logits = functional_call(self._call, weights, (src.index_select(0, rows), tgt_in.index_select(0, rows),
                                                           sub_out))
            where = position.index_select(0, rows)[sub_out.ne(self.runner.pad_id)]
            q[where] = torch.softmax(logits.float(), -1)
            covered[where] = True
        return q, covered

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The selection (small, in the trainer's state); the weights are `tensors()`."""
        return {"names": self.names, "best": [None if math.isinf(b) else float(b) for b in self.best],
                "teacher_step": self.teacher_step.tolist(), "snapshots": sorted(self.snapshots),
                "last_eval": self.last_eval}

    def tensors(self) -> dict[int, dict[str, torch.Tensor]]:
        return {s: {k: v.cpu() for k, v in w.items()} for s, w in self.snapshots.items()}

    def load_state_dict(self, state: dict[str, Any], tensors: dict[int, dict[str, torch.Tensor]]) -> None:
        if state["names"] != self.names:
            raise ValueError(f"LSSD teachers are for directions {state['names']}, this corpus has {self.names}")
        missing = sorted(set(state["snapshots"]) - set(tensors))
        if missing:
            raise ValueError(f"LSSD teacher snapshots of steps {missing} are missing from the checkpoint")
        self.best = np.array([math.inf if b is None else b for b in state["best"]])
        self.teacher_step = np.array(state["teacher_step"], dtype=np.int64)
        self.last_eval = int(state["last_eval"])
        self.snapshots = {int(s): {k: v.to(self.home, self.dtype) for k, v in tensors[s].items()}
                          for s in state["snapshots"]}
