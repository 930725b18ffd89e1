"""What the trainer's helpers may read and call on it, declared as Protocols: the gradient probe
and the surgery step (`StepHost`) and the checkpointer (`CheckpointHost`: the trainer's state as
dicts) are typed against these, never against the Trainer, so none of them imports the loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from .collectives import Dist
from .config import RecipeConfig, StageConfig
from .data.prepare import PreparedCorpus
from .engine import Engine
from .rundir import RunDir


@dataclass
class Counters:
    step: int = 0  # optimizer steps done in the whole run (skipped ones included)
    stage: int = 0  # index of the current stage
    stage_step: int = 0  # optimizer steps done in the current stage
    tokens: int = 0  # target tokens trained on, all ranks
    skipped_steps: int = 0  # steps whose update was skipped (non-finite loss or gradient)
    bad_in_a_row: int = 0
    finished: bool = False


class StepHost(Protocol):
    """The trainer as the gradient probe and the surgery step see it."""

    names: list[str]  # every direction of the corpus, in manifest order
    corpus: PreparedCorpus
    recipe: RecipeConfig
    counters: Counters
    dist: Dist
    engine: Engine
    stage_ids: np.ndarray  # the current stage's directions, as indices into `names`

    def reduce_stats(self, step_acc: torch.Tensor) -> torch.Tensor:
        """The step's per-direction [loss, nll, tokens] summed over ranks (and the stop flag)."""
        ...


class CheckpointHost(Protocol):
    """The trainer as the checkpointer sees it: its state as dicts, and what names a checkpoint."""

    run: RunDir
    recipe: RecipeConfig
    corpus: PreparedCorpus
    counters: Counters
    dist: Dist
    engine: Engine
    stages: list[StageConfig]

    def state_dict(self) -> dict[str, Any]: ...

    def rank_state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], rank_state: dict[str, Any]) -> None: ...

    def event(self, kind: str, **fields: Any) -> None: ...
