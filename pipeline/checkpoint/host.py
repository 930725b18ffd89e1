"""What the checkpointer may read and call on the trainer, declared as a Protocol: the trainer's
state as dicts (`state_dict` / `rank_state_dict` / `load_state_dict`) and what names a checkpoint.
The checkpointer is typed against `CheckpointHost` and never imports the loop."""

from __future__ import annotations

from typing import Any, Protocol

from pipeline.config import RecipeConfig, StageConfig
from pipeline.curriculum.counters import Counters
from pipeline.data.prepare import PreparedCorpus
from pipeline.engine.collectives import Dist
from pipeline.engine.ds_engine import Engine
from pipeline.rundir.layout import RunDir


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

    def shared_state(self) -> dict[str, Any] | None: ...

    def load_state_dict(self, state: dict[str, Any], rank_state: dict[str, Any],
                        shared: dict[str, Any] | None = None) -> None: ...

    def event(self, kind: str, **fields: Any) -> None: ...
