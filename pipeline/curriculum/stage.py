"""The curriculum: which stage runs, how far it has come, and whether its `until:` is met."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.config import RecipeConfig, StageConfig
from pipeline.curriculum.monitors import Monitor, Observation, build_monitor
from pipeline.data.manifest import Manifest


@dataclass
class Ending:
    reason: str  # "monitor", "max_steps" (the stage's) or "run_max_steps" (train.max_steps)
    monitor: str | None = None
    values: dict[str, Any] = field(default_factory=dict)


class StageProgress:
    """Counters and monitors of the running stage; everything here is checkpointed."""

    def __init__(self, recipe: RecipeConfig, index: int, manifest: Manifest, start_step: int) -> None:
        self.recipe, self.index = recipe, index
        self.stage: StageConfig = recipe.resolved_stages()[index]
        self.start_step = start_step
        self.tokens = 0
        self.seconds = 0.0
        until = self.stage.until
        self.mode = "all" if until.all else "any"
        self.monitors: list[Monitor] = [build_monitor(m, manifest.select(m.directions), frozenset(manifest.eval_only))
                                       for m in until.monitors]

    @property
    def needs_dev_loss(self) -> bool:
        return any(m.kind != "budget" for m in self.monitors)

    def limit(self) -> int:
        """The global step at which this stage ends at the latest."""
        return self.recipe.stage_limits(self.index, self.start_step)

    def observe(self, obs: Observation) -> Ending | None:
        """Feed one step's observation; return how the stage ends, if it ends now."""
        fired_now = [(m, v) for m in self.monitors if (v := m.observe(obs)) is not None]
        if obs.step >= self.limit():
            run = self.recipe.train.max_steps
            own = self.stage.until.max_for(run)
            reason = ("max_steps" if own and obs.step >= self.start_step + own
                      else "run_max_steps" if obs.step >= run else "reserved_for_later_stages")
            return Ending(reason, None, {"stage_step": obs.stage_step, "step": obs.step})
        if not self.monitors or obs.stage_step < self.stage.until.min_for(self.recipe.train.max_steps):
            return None
        fired = [m for m in self.monitors if m.fired is not None]
        if self.mode == "any" and fired:
            m, v = fired_now[0] if fired_now else (fired[0], fired[0].fired or {})
            return Ending("monitor", m.kind, dict(v))
        if self.mode == "all" and len(fired) == len(self.monitors):
            return Ending("monitor", "+".join(m.kind for m in self.monitors),
                          {m.kind: m.fired for m in self.monitors})
        return None

    def values(self) -> dict[str, Any]:
        return {m.kind: {**m.values(), "fired": m.fired} for m in self.monitors}

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index, "start_step": self.start_step, "tokens": self.tokens,
                "seconds": self.seconds, "monitors": [m.state_dict() for m in self.monitors]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["index"] != self.index or len(state["monitors"]) != len(self.monitors):
            raise ValueError(f"curriculum state is for stage {state['index']} with {len(state['monitors'])} "
                             f"monitors; this is stage {self.index} with {len(self.monitors)}")
        self.start_step, self.tokens, self.seconds = state["start_step"], state["tokens"], state["seconds"]
        for m, s in zip(self.monitors, state["monitors"]):
            m.load_state_dict(s)
