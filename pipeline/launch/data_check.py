"""`mmtc data check`: validate a manifest (raw pairs) or a recipe's corpus (through the tokenizer);
`mmtc data demo`: build (once) and cache the demo corpus."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from pipeline.config import DataConfig
from pipeline.curriculum.recipe import load_recipe
from pipeline.data.checks import check_raw
from pipeline.data.corpus import DataError
from pipeline.data.demo import build_demo_corpus
from pipeline.data.encode import workers_here
from pipeline.data.filters import empty_mask
from pipeline.data.manifest import load_manifest
from pipeline.data.prepare import cache_root, prepare_corpus
from pipeline.data.progress import Progress
from pipeline.data.sample import sample_pass
from pipeline.data.summary import SPLITS, format_summary
from pipeline.data.train_splits import count_problems, open_splits


def check_manifest(path: str, overrides: list[str] | tuple[str, ...] = ()) -> str:
    data = yaml.safe_load(Path(path).read_text()) if Path(path).is_file() else None
    if isinstance(data, dict) and "directions" not in data and "pairs" not in data:
        return _check_recipe(path, overrides)
    manifest = load_manifest(path)
    # The checks `mmtc run` makes before its tokenizer, with the recipe defaults (on_invalid: error,
    # allow_eval_drops: false); check a recipe instead to use its data: settings.
    defaults = DataConfig()
    sources, evals = open_splits(manifest, defaults.on_invalid)
    progress = Progress("checking", sum(s.pairs for s in sources.values()), print)
    counted = sample_pass(manifest, sources, None, workers_here(), progress.tick)  # streams: any size
    progress.close()
    problems = counted.problems + count_problems(sources, counted.counts) + check_raw(evals, defaults)
    if problems:
        raise DataError(problems)
    n_eval = len(manifest.eval_only)
    lines = [f"{path}: {len(manifest.directions)} directions"
             + (f" ({len(manifest.trained)} trained, {n_eval} eval-only)" if n_eval else "")
             + f", languages {', '.join(manifest.languages)}",
             "pairs per split (empty train pairs would be dropped):"]
    for d in manifest.directions:
        c = counted.counts.get(d.name)
        cells = [_cell("train", c.seen, c.empty, c.invalid)] if c is not None else ["eval-only"]
        for split in SPLITS[1:]:
            rs = evals.get((d.name, split))
            if rs is not None:
                bad = rs.dropped.get("invalid_utf8", 0)
                cells.append(_cell(split, len(rs.src) + bad, int((~empty_mask(rs.src, rs.tgt)).sum()), bad))
        lines.append(f"  {d.name}" + (f" [{d.group}]" if d.group else "") + ": " + "; ".join(cells))
        if d.origin.startswith("pairs"):  # a generated direction: where its files were found
            first = d.split("train") or d.dev
            lines.append(f"      {d.origin.split(' ')[0]}: {first.describe()}")
    groups = manifest.groups()
    if groups:
        lines.append("groups: " + "; ".join(f"{g}: {', '.join(n)}" for g, n in groups.items()))
    lines.append("ok")
    return "\n".join(lines)


def _cell(split: str, seen: int, empty: int, bad: int) -> str:
    extra = ", ".join(x for x in (f"{empty} empty" if empty else "", f"{bad} invalid UTF-8" if bad else "") if x)
    return f"{split} {seen}" + (f" ({extra})" if extra else "")


def _check_recipe(path: str, overrides: list[str] | tuple[str, ...]) -> str:
    recipe = load_recipe(path, overrides)
    corpus = prepare_corpus(recipe.data, recipe.tokenizer, log=lambda _m: None)
    return format_summary(corpus.summary) + "\nok"


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "demo":
        path = build_demo_corpus(cache_root(DataConfig()), log=print)
        print(f"demo corpus manifest: {path}")
        return 0
    print(check_manifest(args.manifest, args.sets))
    return 0
