"""The recipe: one typed config tree and each section's own checks (`pipeline.recipes` loads and
validates it in one pass, with the checks that need other components)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .typed_yaml import to_plain

Check = list[tuple[str, str]]

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def _key(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


@dataclass
class DataConfig:
    corpus: str = "demo"  # a manifest path, or "demo" for the embedded Wesnoth corpus
    max_len: int = 128  # subword tokens per side (train pairs above it are dropped and counted)
    max_len_ratio: float = 4.0  # longer side / shorter side, in tokens
    on_invalid: Literal["error", "skip"] = "error"  # invalid UTF-8 lines
    # max_len / max_len_ratio on dev and test too. Off: evaluation sets are scored whole (only the
    # demo filters them, to score what its tiny model trains on).
    filter_eval: bool = False
    allow_eval_drops: bool = False  # let filters drop dev/test pairs (empty, invalid, filtered) instead of failing
    cache_dir: str | None = None  # default: $MMTC_CACHE or ~/.cache/mmtc

    def check(self, path: str) -> Check:
        out: Check = []
        if self.max_len < 2:
            out.append((_key(path, "max_len"), "must be >= 2"))
        if self.max_len_ratio < 1:
            out.append((_key(path, "max_len_ratio"), "must be >= 1"))
        return out


@dataclass
class TokenizerConfig:
    vocab_size: int = 8000
    model_type: Literal["unigram", "bpe"] = "unigram"
    temperature: float = 5.0  # languages are mixed p ∝ D^(1/τ) for training the pieces
    max_sentences: int = 2_000_000
    character_coverage: float = 0.9995
    byte_fallback: bool = True
    seed: int = 17

    def check(self, path: str) -> Check:
        out: Check = []
        if self.vocab_size < 64:
            out.append((_key(path, "vocab_size"), "must be >= 64"))
        if self.temperature <= 0:
            out.append((_key(path, "temperature"), "must be > 0"))
        if not 0 < self.character_coverage <= 1:
            out.append((_key(path, "character_coverage"), "must be in (0, 1]"))
        return out


@dataclass(frozen=True)
class ModelArch:
    d_model: int
    encoder_layers: int
    decoder_layers: int
    heads: int
    ffn_dim: int
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    label_smoothing: float = 0.1
    max_positions: int = 1024


PRESETS: dict[str, ModelArch] = {
    "tiny": ModelArch(d_model=256, encoder_layers=3, decoder_layers=3, heads=4, ffn_dim=1024),
    "base": ModelArch(d_model=512, encoder_layers=6, decoder_layers=6, heads=8, ffn_dim=2048),
    "big": ModelArch(d_model=1024, encoder_layers=6, decoder_layers=6, heads=16, ffn_dim=4096),
}


def resolve_arch(cfg: ModelConfig) -> ModelArch:
    """The preset, with every field that `cfg` sets (not None) taking precedence."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"unknown model preset {cfg.preset!r}; expected one of {sorted(PRESETS)}")
    base = PRESETS[cfg.preset]
    values = {f.name: getattr(base, f.name) for f in fields(ModelArch)}
    for name in values:
        value = getattr(cfg, name, None)
        if value is not None:
            values[name] = value
    return ModelArch(**values)


@dataclass
class ModelConfig:
    preset: Literal["tiny", "base", "big"] = "tiny"
    d_model: int | None = None
    encoder_layers: int | None = None
    decoder_layers: int | None = None
    heads: int | None = None
    ffn_dim: int | None = None
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    label_smoothing: float = 0.1
    max_positions: int = 1024

    def check(self, path: str) -> Check:
        out: Check = []
        for name in ("dropout", "attention_dropout", "activation_dropout", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                out.append((_key(path, name), "must be in [0, 1)"))
        arch = resolve_arch(self)
        if arch.d_model % arch.heads:
            out.append((_key(path, "heads"), f"d_model {arch.d_model} is not divisible by {arch.heads} heads"))
        return out


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
        # The kind and its params are checked against the sampler registry by pipeline.recipes.
        out: Check = []
        if self.every < 1:
            out.append((_key(path, "every"), "must be >= 1"))
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
            out.append((_key(path, "beta"), "must be in (0, 1]"))
        if not 0 <= self.leak <= 1:
            out.append((_key(path, "leak"), "must be in [0, 1]"))
        if self.refresh < 1:
            out.append((_key(path, "refresh"), "must be >= 1"))
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
    threads: int | None = None  # torch threads per process (default: cores / processes)
    chunk_steps: int = 32  # data order is regenerated per chunk of steps, see pipeline/data/batches.py

    def check(self, path: str) -> Check:
        out: Check = []
        positive = ("max_steps", "max_tokens", "grad_accum", "log_every", "chunk_steps", "keep_last",
                    "max_bad_steps")
        for name in positive:
            if getattr(self, name) < 1:
                out.append((_key(path, name), "must be >= 1"))
        if self.lr <= 0:
            out.append((_key(path, "lr"), "must be > 0"))
        if self.clip_norm < 0:
            out.append((_key(path, "clip_norm"), "must be >= 0 (0: no clipping)"))
        for name in ("warmup_steps", "save_every", "eval_every"):
            if getattr(self, name) < 0:
                out.append((_key(path, name), "must be >= 0"))
        if len(self.adam_betas) != 2:
            out.append((_key(path, "adam_betas"), "must hold two numbers"))
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

    def check(self, path: str) -> Check:
        out: Check = []
        if self.beam < 1:
            out.append((_key(path, "beam"), "must be >= 1"))
        for i, s in enumerate(self.splits):
            if s not in ("dev", "test"):
                out.append((f"{_key(path, 'splits')}[{i}]", f"must be dev or test, got {s!r}"))
        return out


@dataclass
class MonitorConfig:
    """One convergence condition. plateau/overfitting watch dev losses (needs train.eval_every)."""

    monitor: Literal["plateau", "overfitting", "budget"]
    directions: list[str] = field(default_factory=lambda: ["all"])  # names, group:NAME or all
    patience: int = 3  # evaluations
    min_delta: float = 0.01  # plateau: smallest improvement that counts
    relative: bool = True  # plateau: min_delta is a fraction of the reference value
    smoothing: float = 0.0  # plateau: EMA factor on the metric (0: none)
    steps: int | None = None  # budget
    tokens: int | None = None  # budget: target tokens trained in the stage
    minutes: float | None = None  # budget: wall-clock minutes in the stage

    def check(self, path: str) -> Check:
        out: Check = []
        budget = [k for k in ("steps", "tokens", "minutes") if getattr(self, k) is not None]
        if self.monitor == "budget" and not budget:
            out.append((_key(path, "monitor"), "a budget needs steps, tokens or minutes"))
        if self.monitor != "budget" and budget:
            out.append((_key(path, budget[0]), f"only a budget monitor takes {budget[0]}"))
        if self.patience < 1:
            out.append((_key(path, "patience"), "must be >= 1"))
        if not 0 <= self.smoothing < 1:
            out.append((_key(path, "smoothing"), "must be in [0, 1)"))
        if self.min_delta < 0:
            out.append((_key(path, "min_delta"), "must be >= 0"))
        return out


@dataclass
class UntilConfig:
    """When a stage ends: at max_steps, or once min_steps are done and the monitors agree. The
    fractions say the same relative to train.max_steps, so a recipe keeps its meaning when the
    run's budget changes (--set train.max_steps=...)."""

    max_steps: int | None = None  # None: until train.max_steps
    min_steps: int = 0
    max_fraction: float | None = None  # at most this share of train.max_steps (instead of max_steps)
    min_fraction: float | None = None  # monitors may end the stage only after this share (instead of min_steps)
    any: list[MonitorConfig] = field(default_factory=list)  # ends when one of these fires
    all: list[MonitorConfig] = field(default_factory=list)  # ends when every one has fired

    def check(self, path: str) -> Check:
        out: Check = []
        if self.any and self.all:
            out.append((_key(path, "all"), "use either any: or all:, not both"))
        if self.max_steps is not None and self.max_steps < 1:
            out.append((_key(path, "max_steps"), "must be >= 1"))
        if self.min_steps < 0:
            out.append((_key(path, "min_steps"), "must be >= 0"))
        if self.max_steps is not None and self.min_steps > self.max_steps:
            out.append((_key(path, "min_steps"), f"is above max_steps {self.max_steps}"))
        for name, fixed in (("max_fraction", "max_steps"), ("min_fraction", "min_steps")):
            v = getattr(self, name)
            if v is None:
                continue
            if not 0 < v <= 1:
                out.append((_key(path, name), "must be in (0, 1]"))
            if getattr(self, fixed):
                out.append((_key(path, name), f"use either {fixed} or {name}, not both"))
        if self.max_fraction and self.min_fraction and self.min_fraction > self.max_fraction:
            out.append((_key(path, "min_fraction"), f"is above max_fraction {self.max_fraction}"))
        return out

    def max_for(self, run_steps: int) -> int | None:
        """The stage's own step limit for a run of `run_steps` steps (None: none of its own)."""
        if self.max_fraction is not None:
            return max(1, round(self.max_fraction * run_steps))
        return self.max_steps

    def min_for(self, run_steps: int) -> int:
        if self.min_fraction is not None:
            return round(self.min_fraction * run_steps)
        return self.min_steps

    @property
    def monitors(self) -> list[MonitorConfig]:
        return self.any or self.all


@dataclass
class StageConfig:
    name: str
    directions: list[str] = field(default_factory=lambda: ["all"])  # "eng-fra", "group:hrl", "all"
    sampling: SamplingConfig | None = None  # None: the recipe's top-level sampling
    until: UntilConfig = field(default_factory=UntilConfig)
    optimizer: Literal["continue", "reset"] = "continue"  # Adam moments from the previous stage
    lr_schedule: Literal["continue", "reset"] = "continue"  # reset: a new warm-up and decay
    warmup_steps: int | None = None  # after a reset (default train.warmup_steps)
    surgery: SurgeryConfig | None = None  # None: the recipe's top-level surgery
    # The share of train.max_steps kept for this stage: the stages before it end by then at the latest.
    min_share: float = 0.0

    def check(self, path: str) -> Check:
        out: Check = []
        if not 0 <= self.min_share < 1:
            out.append((_key(path, "min_share"), "must be in [0, 1)"))
        if not self.name or not self.name.replace("-", "_").isidentifier():
            out.append((_key(path, "name"), f"must be a simple name (letters, digits, _ or -), got {self.name!r}"))
        if not self.directions:
            out.append((_key(path, "directions"), "must name at least one direction or group"))
        return out


@dataclass
class RecipeConfig:
    name: str = "run"
    seed: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    surgery: SurgeryConfig = field(default_factory=SurgeryConfig)
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


def recipe_to_plain(cfg: RecipeConfig) -> dict[str, Any]:
    return to_plain(cfg)
