"""The recipe: one typed config tree, loaded from YAML plus `--set` overrides and validated once."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .typed_yaml import ConfigError, bind, load_yaml_file, set_dotted, to_plain

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
        from .model import resolve_arch

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
        from .sampling import check_sampling

        out = check_sampling(self, path)
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


def resolve_recipe_path(recipe: str | Path | None) -> Path:
    """`None` is the demo recipe; a bare name like `demo` finds `stages/demo.yaml`."""
    if recipe is None:
        return PACKAGE_ROOT / "stages" / "demo.yaml"
    p = Path(recipe)
    if p.exists():
        return p
    candidate = PACKAGE_ROOT / "stages" / (p.name if p.suffix else f"{p.name}.yaml")
    if candidate.exists():
        return candidate
    raise ConfigError([f"{recipe}: recipe not found (looked in . and {PACKAGE_ROOT / 'stages'})"])


def _merge_over(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` wins; mappings merge key by key, everything else (lists included) is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge_over(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _raw_recipe(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Any]:
    """The recipe's mapping with its `base:` chain merged in (base first, this file over it)."""
    data, lines = load_yaml_file(path)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: a recipe must be a mapping"], str(path))
    base = data.pop("base", None)
    if base is None:
        return data, lines
    if not isinstance(base, str):
        raise ConfigError([f"{lines.at('base')}: base must name a recipe"], str(path))
    bpath = Path(base) if Path(base).is_absolute() else path.parent / (base if base.endswith(".yaml") else f"{base}.yaml")
    if bpath.resolve() in seen:
        raise ConfigError([f"{lines.at('base')}: recipes include each other ({bpath})"], str(path))
    if not bpath.is_file():
        raise ConfigError([f"{lines.at('base')}: {bpath} not found"], str(path))
    parent, _ = _raw_recipe(bpath, (*seen, path.resolve()))
    corpus = parent.get("data", {}).get("corpus")
    if corpus and corpus != "demo" and not Path(corpus).is_absolute():
        parent["data"]["corpus"] = str((bpath.parent / corpus).resolve())  # relative to its own file
    return _merge_over(parent, data), lines


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RecipeConfig:
    """Load a recipe (with its `base:` recipes), apply `--set` overrides, validate everything."""
    data, lines = _raw_recipe(Path(path))
    for ov in overrides:
        set_dotted(data, ov)
    # Direction names are checked against the corpus now, before any tokenizer or engine starts.
    unknown = [f"{lines.at(k)}: {msg}" for k, msg in selector_errors(data, Path(path))]
    try:
        cfg = bind(RecipeConfig, data, lines)
    except ConfigError as exc:
        raise ConfigError(exc.errors + unknown, exc.source) from None
    if unknown:
        raise ConfigError(unknown, lines.source)
    # Relative corpus paths are relative to the recipe's folder, so recipes travel with their data.
    corpus = cfg.data.corpus
    if corpus != "demo" and not Path(corpus).is_absolute():
        local = (Path(path).parent / corpus).resolve()
        if local.exists() or not Path(corpus).exists():
            cfg.data.corpus = str(local)
        else:
            cfg.data.corpus = str(Path(corpus).resolve())
    return cfg


def corpus_directions(corpus: Any, recipe_path: Path) -> tuple[list[str], dict[str, list[str]]] | None:
    """The corpus's direction names and groups, read from its manifest without preparing any data;
    None when the manifest cannot be read here (`mmtc run` reports that with the data's errors)."""
    if corpus in (None, "demo"):
        from .data.demo import DEMO_DIRECTIONS

        groups: dict[str, list[str]] = {}
        for d in DEMO_DIRECTIONS:
            groups.setdefault(d.group, []).append(d.name)
        return [d.name for d in DEMO_DIRECTIONS], groups
    if not isinstance(corpus, str):
        return None
    p = Path(corpus)
    if not p.is_absolute() and (recipe_path.parent / p).exists():
        p = recipe_path.parent / p
    if not p.is_file():
        return None
    from .data.manifest import load_manifest

    try:
        manifest = load_manifest(p)
    except ConfigError:
        return None
    return manifest.names, manifest.groups()


def selector_errors(data: Any, recipe_path: Path) -> list[tuple[str, str]]:
    """(key path, message) for every `group:NAME` or direction name in the raw recipe that the
    corpus lacks: stage directions, monitor directions and surgery task groups."""
    if not isinstance(data, dict):
        return []
    section = data.get("data") if isinstance(data.get("data"), dict) else {}
    known = corpus_directions(section.get("corpus", "demo"), recipe_path)
    if known is None:
        return []
    names, groups = known
    lists: list[tuple[str, Any]] = []

    def surgery(node: Any, key: str) -> None:
        if isinstance(node, dict) and isinstance(node.get("groups"), dict):
            lists.extend((f"{key}.groups.{task}", sel) for task, sel in node["groups"].items())

    surgery(data.get("surgery"), "surgery")
    stages = data.get("stages") if isinstance(data.get("stages"), list) else []
    for i, st in enumerate(stages):
        if not isinstance(st, dict):
            continue
        lists.append((f"stages[{i}].directions", st.get("directions", ["all"])))
        surgery(st.get("surgery"), f"stages[{i}].surgery")
        until = st.get("until") if isinstance(st.get("until"), dict) else {}
        for mode in ("any", "all"):
            for j, m in enumerate(until.get(mode) or [] if isinstance(until.get(mode), list) else []):
                if isinstance(m, dict) and "directions" in m:
                    lists.append((f"stages[{i}].until.{mode}[{j}].directions", m["directions"]))
    out = []
    for key, selectors in lists:
        if not isinstance(selectors, list):
            continue
        for j, sel in enumerate(selectors):
            if not isinstance(sel, str) or sel == "all" or sel in names:
                continue
            if sel.startswith("group:"):
                if sel[6:] not in groups:
                    out.append((f"{key}[{j}]", f"unknown group {sel[6:]!r} (groups: {', '.join(sorted(groups)) or 'none'})"))
            else:
                out.append((f"{key}[{j}]", f"unknown direction {sel!r} (directions: {', '.join(names)})"))
    return out


def recipe_from_plain(data: dict[str, Any]) -> RecipeConfig:
    return bind(RecipeConfig, data)


def recipe_to_plain(cfg: RecipeConfig) -> dict[str, Any]:
    return to_plain(cfg)
