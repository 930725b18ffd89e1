"""Loading a recipe: YAML with its `base:` chain, `--set` overrides, and one validation pass that
reports every error together with its key path and line, including the checks that need other
components (sampler kinds and params against the registry, direction names against the corpus)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pipeline.balance.static import check_sampling
from pipeline.config import PACKAGE_ROOT, RecipeConfig, SamplingConfig
from pipeline.core.typed_yaml import ConfigError, Lines, bind, load_yaml_file, set_dotted


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
    extra = [f"{lines.at(k)}: {msg}" for k, msg in selector_errors(data, Path(path)) + sampler_errors(data)]
    cfg = _bind_with(data, lines, extra)
    # Relative corpus paths are relative to the recipe's folder, so recipes travel with their data.
    corpus = cfg.data.corpus
    if corpus != "demo" and not Path(corpus).is_absolute():
        local = (Path(path).parent / corpus).resolve()
        if local.exists() or not Path(corpus).exists():
            cfg.data.corpus = str(local)
        else:
            cfg.data.corpus = str(Path(corpus).resolve())
    return cfg


def corpus_directions(corpus: Any, recipe_path: Path) -> tuple[list[str], dict[str, list[str]], set[str]] | None:
    """The corpus's direction names, groups and eval-only directions, read from its manifest
    without preparing any data; None when the manifest cannot be read here (`mmtc run` reports
    that with the data's errors)."""
    if corpus in (None, "demo"):
        from pipeline.data.demo import DEMO_DIRECTIONS

        groups: dict[str, list[str]] = {}
        for d in DEMO_DIRECTIONS:
            groups.setdefault(d.group, []).append(d.name)
        return [d.name for d in DEMO_DIRECTIONS], groups, set()
    if not isinstance(corpus, str):
        return None
    p = Path(corpus)
    if not p.is_absolute() and (recipe_path.parent / p).exists():
        p = recipe_path.parent / p
    if not p.is_file():
        return None
    from pipeline.data.manifest import load_manifest

    try:
        manifest = load_manifest(p)
    except ConfigError:
        return None
    return manifest.names, manifest.groups(), set(manifest.eval_only)


def selector_errors(data: Any, recipe_path: Path) -> list[tuple[str, str]]:
    """(key path, message) for every `group:NAME` or direction name in the raw recipe that the
    corpus lacks: stage directions, monitor directions and surgery task groups."""
    if not isinstance(data, dict):
        return []
    section = data.get("data") if isinstance(data.get("data"), dict) else {}
    known = corpus_directions(section.get("corpus", "demo"), recipe_path)
    if known is None:
        return []
    names, groups, eval_only = known
    lists: list[tuple[str, Any]] = []
    sampled: set[str] = set()  # the keys whose directions a stage samples (never eval-only ones)

    def surgery(node: Any, key: str) -> None:
        if isinstance(node, dict) and isinstance(node.get("groups"), dict):
            lists.extend((f"{key}.groups.{task}", sel) for task, sel in node["groups"].items())
            sampled.update(f"{key}.groups.{task}" for task in node["groups"])  # tasks are trained directions

    surgery(data.get("surgery"), "surgery")
    train = data.get("train") if isinstance(data.get("train"), dict) else {}
    keep = train.get("keep_best") if isinstance(train.get("keep_best"), dict) else {}
    if "group" in keep:
        chosen = keep["group"] if isinstance(keep["group"], list) else [keep["group"]]
        lists.append(("train.keep_best.group", [g if g == "all" else f"group:{g}" for g in chosen]))
    stages = data.get("stages") if isinstance(data.get("stages"), list) else []
    for i, st in enumerate(stages):
        if not isinstance(st, dict):
            continue
        lists.append((f"stages[{i}].directions", st.get("directions", ["all"])))
        sampled.add(f"stages[{i}].directions")
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
            if not isinstance(sel, str) or sel == "all":
                continue
            if sel in names:
                if key in sampled and sel in eval_only:
                    out.append((f"{key}[{j}]", f"{sel} is eval-only (no training data): a stage cannot sample it"))
                continue
            if sel.startswith("group:"):
                if sel[6:] not in groups:
                    out.append((f"{key}[{j}]", f"unknown group {sel[6:]!r} (groups: {', '.join(sorted(groups)) or 'none'})"))
                elif key in sampled and set(groups[sel[6:]]) <= eval_only:
                    out.append((f"{key}[{j}]", f"group {sel[6:]!r} is all eval-only: a stage cannot sample it"))
            else:
                out.append((f"{key}[{j}]", f"unknown direction {sel!r} (directions: {', '.join(names)})"))
    return out


def recipe_from_plain(data: dict[str, Any]) -> RecipeConfig:
    """A saved config.yaml (run directories), validated as a recipe is."""
    return _bind_with(data, Lines(), [f"{k}: {msg}" for k, msg in sampler_errors(data)])


def _bind_with(data: Any, lines: Lines, extra: list[str]) -> RecipeConfig:
    """Bind the recipe; its own errors and `extra` (the cross-component checks) raise together."""
    try:
        cfg = bind(RecipeConfig, data, lines)
    except ConfigError as exc:
        raise ConfigError(exc.errors + extra, exc.source) from None
    if extra:
        raise ConfigError(extra, lines.source)
    return cfg


def sampler_errors(data: Any) -> list[tuple[str, str]]:
    """Every sampling section's kind and params against the sampler registry: the top-level one
    and each stage's. A section that does not bind is left to the recipe's own errors."""
    if not isinstance(data, dict):
        return []
    sections = [("sampling", data.get("sampling", {}))]
    stages = data.get("stages") if isinstance(data.get("stages"), list) else []
    sections += [(f"stages[{i}].sampling", st["sampling"]) for i, st in enumerate(stages)
                 if isinstance(st, dict) and st.get("sampling") is not None]
    out: list[tuple[str, str]] = []
    for key, raw in sections:
        try:
            cfg = bind(SamplingConfig, raw if raw is not None else {}, path=key)
        except ConfigError:
            continue
        out += check_sampling(cfg, key)
    return out


