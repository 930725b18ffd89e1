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
from pipeline.data.filters import empty_mask
from pipeline.data.manifest import load_manifest
from pipeline.data.prepare import cache_root, prepare_corpus, read_all
from pipeline.data.summary import SPLITS, format_summary


def check_manifest(path: str, overrides: list[str] | tuple[str, ...] = ()) -> str:
    data = yaml.safe_load(Path(path).read_text()) if Path(path).is_file() else None
    if isinstance(data, dict) and "directions" not in data:
        return _check_recipe(path, overrides)
    manifest = load_manifest(path)
    # The checks `mmtc run` makes before its tokenizer, with the recipe defaults (on_invalid: error,
    # allow_eval_drops: false); check a recipe instead to use its data: settings.
    defaults = DataConfig()
    raw = read_all(manifest, defaults.on_invalid)
    problems = check_raw(raw, defaults)
    if problems:
        raise DataError(problems)
    lines = [f"{path}: {len(manifest.directions)} directions, languages {', '.join(manifest.languages)}",
             "pairs per split (empty train pairs would be dropped):"]
    for d in manifest.directions:
        cells = []
        for split in SPLITS:
            rs = raw.get((d.name, split))
            if rs is None:
                continue
            empty = int((~empty_mask(rs.src, rs.tgt)).sum())
            bad = rs.dropped.get("invalid_utf8", 0)
            extra = ", ".join(x for x in (f"{empty} empty" if empty else "", f"{bad} invalid UTF-8" if bad else "") if x)
            cells.append(f"{split} {len(rs.src) + bad}" + (f" ({extra})" if extra else ""))
        lines.append(f"  {d.name}" + (f" [{d.group}]" if d.group else "") + ": " + "; ".join(cells))
    groups = manifest.groups()
    if groups:
        lines.append("groups: " + "; ".join(f"{g}: {', '.join(n)}" for g, n in groups.items()))
    lines.append("ok")
    return "\n".join(lines)


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
