"""The recipe: the one typed config tree of a run, with the checks that span its sections
(`pipeline.curriculum.recipe` loads and validates it in one pass, with the checks that need
other components)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.config.base import Check
from pipeline.config.data import DataConfig, TokenizerConfig
from pipeline.config.model import ModelConfig
from pipeline.config.stages import StageConfig
from pipeline.config.training import (
    DeepSpeedConfig,
    DistillConfig,
    EvalConfig,
    SamplingConfig,
    SurgeryConfig,
    TrainConfig,
)
from pipeline.core.typed_yaml import to_plain


@dataclass
class RecipeConfig:
    name: str = "run"
    seed: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    surgery: SurgeryConfig = field(default_factory=SurgeryConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stages: list[StageConfig] = field(default_factory=list)

    def check(self, path: str) -> Check:
        names = [s.name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        out: Check = [("stages", f"stage names must be unique; repeated: {', '.join(dup)}")] if dup else []
        surgical = [self.surgery] + [s.surgery for s in self.stages if s.surgery is not None]
        if any(c.method != "none" for c in surgical) and self.train.precision in ("bf16", "fp16"):
            out.append(("train.precision", "gradient surgery works on fp32 gradients: use fp32 or amp_bf16"))
        if self.uses_lssd() and not self.train.eval_every:
            out.append(("train.eval_every", "distill.method lssd takes its teachers from the dev-loss evaluations: "
                        "set train.eval_every"))
        for i, stage in enumerate(self.stages):
            for j, m in enumerate(stage.until.monitors):
                if m.monitor != "budget" and not self.train.eval_every:
                    key = f"stages[{i}].until.{'any' if stage.until.any else 'all'}[{j}]"
                    out.append((key, f"a {m.monitor} monitor needs dev losses: set train.eval_every"))
        return out

    def stage_limits(self, index: int, start_step: int) -> int:
        """The global step at which stage `index`, started at `start_step`, ends at the latest: its
        own limit, the run's, and the steps the later stages' min_share keeps for them."""
        run = self.train.max_steps
        stages = self.resolved_stages()
        reserved = sum(round(s.min_share * run) for s in stages[index + 1:])
        own = stages[index].until.max_for(run)
        end = run - reserved
        return min(end, start_step + own) if own else end

    def budget_warnings(self) -> list[str]:
        """Stages that can get less than 10% of the run, or less than their min_share, when every
        stage before them runs to its limit (a curriculum degenerating as the budget changes)."""
        run = self.train.max_steps
        stages = self.resolved_stages()
        out, start = [], 0
        for i, st in enumerate(stages):
            end = max(start, self.stage_limits(i, start))
            share = (end - start) / run
            want = max(st.min_share, 0.1)
            if i > 0 and share < want - 1e-9:
                out.append(f"stage {st.name} can get as few as {end - start} of {run} steps ({100 * share:.0f}%) if "
                           f"the stages before it run to their limits; give it stages[{i}].min_share or cap them with "
                           "until.max_fraction")
            start = end
        return out

    def resolved_stages(self) -> list[StageConfig]:
        """The stages to run; a recipe without `stages:` is one stage over every direction."""
        if self.stages:
            return self.stages
        return [StageConfig(name="main")]

    def stage_sampling(self, stage: StageConfig) -> SamplingConfig:
        return stage.sampling if stage.sampling is not None else self.sampling

    def stage_surgery(self, stage: StageConfig) -> SurgeryConfig:
        return stage.surgery if stage.surgery is not None else self.surgery

    def stage_distill(self, stage: StageConfig) -> DistillConfig:
        return stage.distill if stage.distill is not None else self.distill

    def uses_lssd(self) -> bool:
        return any(self.stage_distill(s).method == "lssd" for s in self.resolved_stages())


def recipe_to_plain(cfg: RecipeConfig) -> dict[str, Any]:
    return to_plain(cfg)
