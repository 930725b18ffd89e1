"""The sections that say how a stage trains: sampling (which sampler owns the mix), gradient
surgery, the optimizer and step budget, DeepSpeed, evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.config.base import Check, key_path


@dataclass
class SamplingConfig:
    """Which sampler owns the direction mix; `params` are checked by the sampler itself."""

    kind: str = "temperature"
    params: dict[str, Any] = field(default_factory=dict)
    # draw batches by p; or weight each direction's mean loss by p; or each token by p / batch share
    apply: Literal["sample", "loss_weight", "token_weight"] = "sample"
    every: int = 1  # update cadence of a dynamic policy, in steps
    batches: Literal["proportional", "uniform"] = "proportional"  # the batch mix under loss/token_weight

    def check(self, path: str) -> Check:
        # The kind and its params are checked against the sampler registry by pipeline.curriculum.recipe.
        out: Check = []
        if self.every < 1:
            out.append((key_path(path, "every"), "must be >= 1"))
        return out


@dataclass
class SurgeryConfig:
    """Gradient surgery over tasks (directions or groups of directions); T tasks cost T backwards."""

    method: Literal["none", "pcgrad", "gradvac", "graddrop", "target_projection"] = "none"
    tasks: Literal["directions", "groups"] = "groups"  # groups: the manifest's, or `groups:` below
    groups: dict[str, list[str]] = field(default_factory=dict)  # task name -> directions/group:NAME
    beta: float = 0.01  # gradvac: EMA rate of the similarity targets
    granularity: Literal["model", "layer"] = "model"  # gradvac: one target per task pair, or per layer
    leak: float = 0.0  # graddrop
    refresh: int = 100  # target_projection: the dev gradient is recomputed every K steps
    target_tokens: int = 4000  # target_projection: dev tokens in the target gradient's batch

    def check(self, path: str) -> Check:
        out: Check = []
        if not 0 < self.beta <= 1:
            out.append((key_path(path, "beta"), "must be in (0, 1]"))
        if not 0 <= self.leak <= 1:
            out.append((key_path(path, "leak"), "must be in [0, 1]"))
        if self.refresh < 1:
            out.append((key_path(path, "refresh"), "must be >= 1"))
        return out


@dataclass
class DistillConfig:
    """Language-specific self-distillation (LSSD, Huang et al. 2022): each direction distils from
    the snapshot at which its own dev loss was best so far (teachers change at train.eval_every)."""

    method: Literal["none", "lssd"] = "none"
    weight: float = 1.0  # w in (CE + w·KD) / 2 (their --distill-weight / alpha, default 1.0)
    gate: Literal["none", "hard", "soft"] = "none"  # which tokens (or sentences) distil, and how much
    level: Literal["token", "sentence"] = "token"  # where the gate compares teacher and student
    hard_floor: float = 0.2  # the hard gate's weight where the student is already the more confident
    start_after: int = 0  # stage steps before the distillation term is added (teachers are kept from the start)
    # stalled (their code): a direction distils only while its dev loss did not improve at the latest
    # evaluation, i.e. past its own convergence point; always: whenever it has a teacher
    when: Literal["stalled", "always"] = "stalled"
    snapshot_dtype: Literal["bf16", "fp32"] = "bf16"  # how the teachers' weights are kept
    placement: Literal["device", "cpu"] = "device"  # cpu: teachers in host memory, moved in per forward

    def check(self, path: str) -> Check:
        out: Check = []
        if self.weight < 0:
            out.append((key_path(path, "weight"), "must be >= 0"))
        if not 0 <= self.hard_floor <= 1:
            out.append((key_path(path, "hard_floor"), "must be in [0, 1]"))
        if self.start_after < 0:
            out.append((key_path(path, "start_after"), "must be >= 0"))
        return out


@dataclass
class KeepBestConfig:
    """Checkpoints kept on disk beside train.keep_last: the K with the lowest mean dev loss (logged
    at their step) over each named group; `mmtc average --best K` reads the same numbers."""

    k: int = 0  # 0: off
    by: Literal["dev_loss", "dev_bleu"] = "dev_loss"
    group: str | list[str] = "all"  # a group of the manifest (hrl, lrl, ...), all, or a list of them

    def groups(self) -> list[str]:
        return [self.group] if isinstance(self.group, str) else list(self.group)

    def check(self, path: str) -> Check:
        out: Check = []
        if self.k < 0:
            out.append((key_path(path, "k"), "must be >= 0 (0: off)"))
        if self.by == "dev_bleu" and self.k:
            out.append((key_path(path, "by"), "dev BLEU is scored only at stage ends, whose checkpoints are always "
                                              "kept; rank by dev_loss (train.eval_every), or keep more with keep_last "
                                              "and use `mmtc eval --split dev` + `mmtc average --by dev_bleu`"))
        if not self.groups():
            out.append((key_path(path, "group"), "name at least one group (or all)"))
        return out


@dataclass
class TrainConfig:
    max_steps: int = 1000  # optimizer steps for the whole run (every stage counts)
    max_tokens: int = 4096  # padded tokens per micro-batch (per rank), the larger side counted
    grad_accum: int = 1
    lr: float = 5e-4
    lr_schedule: Literal["inverse_sqrt", "cosine", "constant"] = "inverse_sqrt"
    warmup_steps: int = 400
    min_lr: float = 0.0
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    adam_eps: float = 1e-8
    clip_norm: float = 1.0
    precision: Literal["fp32", "bf16", "amp_bf16", "fp16"] = "fp32"
    log_every: int = 10
    eval_every: int = 0  # dev loss per direction every N steps (0: never); monitors read it
    save_every: int = 0  # 0: only at the end of each stage
    max_bad_steps: int = 5  # non-finite loss or gradient this many steps in a row: save and stop
    grad_similarity_every: int = 0  # log pairwise cosines of the task gradients every N steps (0: never)
    keep_last: int = 2
    keep_best: KeepBestConfig = field(default_factory=KeepBestConfig)
    threads: int | None = None  # torch threads per process (default: cores / processes)
    chunk_steps: int = 32  # data order is regenerated per chunk of steps, see pipeline/data/batches.py

    def check(self, path: str) -> Check:
        out: Check = []
        positive = ("max_steps", "max_tokens", "grad_accum", "log_every", "chunk_steps", "keep_last",
                    "max_bad_steps")
        for name in positive:
            if getattr(self, name) < 1:
                out.append((key_path(path, name), "must be >= 1"))
        if self.lr <= 0:
            out.append((key_path(path, "lr"), "must be > 0"))
        if self.clip_norm < 0:
            out.append((key_path(path, "clip_norm"), "must be >= 0 (0: no clipping)"))
        for name in ("warmup_steps", "save_every", "eval_every"):
            if getattr(self, name) < 0:
                out.append((key_path(path, name), "must be >= 0"))
        if len(self.adam_betas) != 2:
            out.append((key_path(path, "adam_betas"), "must hold two numbers"))
        if self.keep_best.k and not self.eval_every:
            out.append((key_path(path, "keep_best"), "ranks by the dev loss logged every train.eval_every "
                                                     "steps: set eval_every (and save_every a multiple of it)"))
        return out


@dataclass
class DeepSpeedConfig:
    config: str = "zero0"  # a name in ds_configs/ (zero0..zero3, zero3_offload) or a JSON path
    overrides: dict[str, Any] = field(default_factory=dict)  # merged over the JSON


@dataclass
class EvalConfig:
    beam: int = 4
    length_penalty: float = 1.0
    max_len_a: float = 1.5  # hypothesis length limit: a * source length + b
    max_len_b: int = 10
    batch_tokens: int = 6000
    max_sentences: int | None = None  # per direction and split; None evaluates everything
    splits: list[str] = field(default_factory=lambda: ["test"])
    baseline: bool = True  # also score the copy-the-source baseline
    stage_end: bool = True  # dev BLEU/chrF and the stage report at every stage end (false: timing runs)
    figures: bool = True  # the stage-end index.html's figures (false: tables only; `mmtc report` draws them)

    def check(self, path: str) -> Check:
        out: Check = []
        if self.beam < 1:
            out.append((key_path(path, "beam"), "must be >= 1"))
        for i, s in enumerate(self.splits):
            if s not in ("dev", "test"):
                out.append((f"{key_path(path, 'splits')}[{i}]", f"must be dev or test, got {s!r}"))
        return out
