"""Opening a stage: from the recipe's stage to what the loop runs (sampler, batch stream, monitors,
surgery step, gradient probe, DoReMi's reference model), as one `StageRuntime`.

The trainer calls `open_stage` when a stage starts and again when a resume lands inside it; the
stage's transitions (optimizer and LR-schedule resets, the stage_start event) are the trainer's,
applied only when the stage starts fresh.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from pipeline.balance.base import Sampler
from pipeline.balance.static import build_sampler
from pipeline.checkpoint.weights import ReferenceModel
from pipeline.config import DistillConfig, SamplingConfig, StageConfig
from pipeline.core.typed_yaml import ConfigError
from pipeline.curriculum.stage import StageProgress
from pipeline.data.batches import BatchStream
from pipeline.gradients.host import StepHost
from pipeline.gradients.probe import GradientProbe
from pipeline.gradients.surgery_step import TaskStep


@dataclass
class StageRuntime:
    """Everything the loop runs for one open stage; rebuilt (not saved) on resume, then each part
    with state takes its saved state."""

    names: list[str]  # the stage's directions
    stage_ids: np.ndarray  # ... as indices into the corpus's direction list
    progress: StageProgress
    policy: Sampler
    apply: Literal["sample", "loss_weight", "token_weight"]  # SamplingConfig.apply
    reference: ReferenceModel | None
    stream: BatchStream
    task_step: TaskStep | None
    probe: GradientProbe | None
    distill: DistillConfig  # the stage's (method none: no distillation)


def open_stage(host: StepHost, stages: list[StageConfig], index: int, reference: ReferenceModel | None) -> StageRuntime:
    """Build stage `index`'s runtime. `host` is the trainer (the surgery step and the probe keep it
    to read the engine and the step's state); `reference` the previous stage's, reused if it is the
    same model."""
    recipe, corpus, counters = host.recipe, host.corpus, host.counters
    stage = stages[index]
    names = corpus.manifest.select(stage.directions, trained=True)
    sizes = corpus.sizes(names)
    start = counters.step - counters.stage_step
    progress = StageProgress(recipe, index, corpus.manifest, start)
    cfg = recipe.stage_sampling(stage)
    policy = build_sampler(cfg, names, sizes, horizon=progress.limit() - start)
    reference = _reference(host, stage, policy, reference)
    # Under loss_weight the policy only weighs losses; batches keep their own (static) mix.
    batch_sampler = policy if cfg.apply == "sample" else build_sampler(SamplingConfig(cfg.batches), names, sizes)
    specs = {d.name: d for d in corpus.manifest.directions}
    t = recipe.train
    # A dynamic policy's p takes effect when a chunk is planned: chunks start at its updates.
    period = policy.every if policy.dynamic and cfg.apply == "sample" else None
    stage_ids = np.array([host.names.index(n) for n in names])
    task_step = None
    scfg = recipe.stage_surgery(stage)
    if scfg.method != "none" or t.grad_similarity_every:
        if scfg.method == "none" and scfg.tasks == "groups" and not scfg.groups and len(
                {g for g in corpus.manifest.groups() if set(corpus.manifest.groups()[g]) & set(names)}) < 2:
            scfg = replace(scfg, tasks="directions")  # diagnostics only: directions when there are no groups
        task_step = TaskStep(host, scfg, names, recipe.stage_distill(stage))
    probe = None
    if policy.needs_gradients:
        probe = GradientProbe(host, policy.probe_tokens if policy.probe_tokens is not None else t.max_tokens)
    stream = BatchStream(
        [corpus.splits["train"][n] for n in names],
        list(stage_ids),
        [corpus.tokenizer.tag_id(specs[n].tgt) for n in names],
        batch_sampler,
        seed=recipe.seed, stage=index, max_tokens=t.max_tokens, chunk_steps=t.chunk_steps,
        world=host.dist.world, rank=host.dist.rank, accum=t.grad_accum, period=period,
    )
    return StageRuntime(names, stage_ids, progress, policy, cfg.apply, reference, stream, task_step, probe,
                        recipe.stage_distill(stage))


def _reference(host: StepHost, stage: StageConfig, policy: Sampler, previous: ReferenceModel | None
               ) -> ReferenceModel | None:
    if not policy.wants_reference:
        return None
    if host.recipe.stage_surgery(stage).method != "none":
        raise ConfigError([f"stages.{stage.name}: {policy.kind} scores the plain step's tokens; it does not combine "
                           "with gradient surgery"])
    params = policy.params  # type: ignore[attr-defined]
    return ReferenceModel.reuse_or_load(previous, params.reference_run, params.reference_checkpoint,
                                        host.corpus.tokenizer.path, host.dist.device,
                                        {"fp32": torch.float32, "fp16": torch.float16}.get(host.recipe.train.precision, torch.bfloat16))
