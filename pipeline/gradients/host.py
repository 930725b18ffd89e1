"""What the gradient probe and the surgery step may read and call on the trainer, declared as a
Protocol: both are typed against `StepHost`, never against the Trainer, so neither imports the loop."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from pipeline.config import RecipeConfig
from pipeline.curriculum.counters import Counters
from pipeline.data.prepare import PreparedCorpus
from pipeline.distill.teachers import TeacherBank
from pipeline.engine.collectives import Dist
from pipeline.engine.ds_engine import Engine


class StepHost(Protocol):
    """The trainer as the gradient probe and the surgery step see it."""

    names: list[str]  # every direction of the corpus, in manifest order
    corpus: PreparedCorpus
    recipe: RecipeConfig
    counters: Counters
    dist: Dist
    engine: Engine
    stage_ids: np.ndarray  # the current stage's directions, as indices into `names`
    teachers: TeacherBank | None  # LSSD's teachers (None when no stage distils)

    def reduce_stats(self, step_acc: torch.Tensor) -> torch.Tensor:
        """The step's per-direction [loss, nll, tokens] summed over ranks (and the stop flag)."""
        ...
