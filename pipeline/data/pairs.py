"""Directions generated from languages and a path pattern (a manifest's `pairs:` entries).

    pairs:
      - pivot: eng
        langs: [deu, fra, bos]
        both: true                       # eng->X and X->eng, from the same files
        pattern: "eng-{x}/{split}.{lang}"
        group_by_size: {hrl: 50000, lrl: 0}

A pattern names one file: `{lang}` is the language of that side, `{split}` the file's split name
(`splits:` maps ours to it), `{src}` / `{tgt}` the direction's languages, `{pivot}` and `{x}` the
pivot and the other language, `{pair}` the two sorted and joined by "-" (OPUS-100's folders).
Without a pivot an entry gives every ordered pair of its languages. Every file is checked here,
so a missing language or split is an error naming the language and the path, not a failure later.
"""

from __future__ import annotations

import contextlib
import json
import os
import string
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.atomic import atomic_write_text
from pipeline.data.fingerprints import stat_key
from pipeline.data.spec import Check, DirectionSpec, SourceSpec, simple_name

PLACEHOLDERS = ("lang", "split", "src", "tgt", "pivot", "x", "pair")
SPLIT_NAMES = ("train", "dev", "test")


@dataclass
class PairsSpec:
    langs: list[str]
    pattern: str
    pivot: str | None = None
    both: bool = False  # with a pivot: pivot->X and X->pivot
    to_pivot: bool = False  # with a pivot: X->pivot only (many-to-one)
    # our split -> the {split} in file names; test: null when there is none
    splits: dict[str, str | None] = field(default_factory=lambda: {"train": "train", "dev": "dev", "test": "test"})
    group: str | dict[str, str] | None = None  # one group, or by language / by direction name ("deu-eng")
    # group by training pairs: a direction joins the group with the largest threshold <= its pairs
    group_by_size: dict[str, int] | None = None
    eval_only: bool = False

    def problems(self, path: str) -> Check:
        """What is wrong with the entry itself. Not `check`: binding would raise before the files
        are looked at, and every error of a manifest is reported together."""
        out: Check = []
        if not self.langs:
            out.append((f"{path}.langs", "must list at least one language"))
        dup = sorted({x for x in self.langs if self.langs.count(x) > 1})
        if dup:
            out.append((f"{path}.langs", f"repeated languages: {', '.join(dup)}"))
        if self.pivot is None and (self.both or self.to_pivot):
            out.append((f"{path}.pivot", "both / to_pivot need a pivot (without one every ordered pair is made)"))
        if self.pivot is None and len(self.langs) < 2:
            out.append((f"{path}.langs", "without a pivot, at least two languages (every ordered pair)"))
        if self.pivot is not None and self.pivot in self.langs:
            out.append((f"{path}.langs", f"lists the pivot {self.pivot!r}"))
        if self.both and self.to_pivot:
            out.append((f"{path}.to_pivot", "both: true already includes X->pivot; set one of them"))
        for k in self.splits:
            if k not in SPLIT_NAMES:
                out.append((f"{path}.splits.{k}", f"not a split; splits are {', '.join(SPLIT_NAMES)}"))
        for k in ("dev",) + (() if self.eval_only else ("train",)):
            if not self.splits.get(k):
                out.append((f"{path}.splits", f"needs {k}" + ("" if k == "dev" else " (or eval_only: true)")))
        if self.group is not None and self.group_by_size is not None:
            out.append((f"{path}.group_by_size", "set group or group_by_size, not both"))
        if self.group_by_size is not None and self.eval_only:
            out.append((f"{path}.group_by_size", "eval-only directions have no training pairs to size"))
        named = [("group", g) for g in ([self.group] if isinstance(self.group, str) else (self.group or {}).values())]
        for key, g in named + [("group_by_size", g) for g in self.group_by_size or {}]:
            if g == "all" or not simple_name(g):
                out.append((f"{path}.{key}", f"a name of letters, digits, _ and - other than 'all', got {g!r}"))
        sizes = list((self.group_by_size or {}).values())
        if len(set(sizes)) < len(sizes):
            out.append((f"{path}.group_by_size", f"two groups share a threshold: {self.group_by_size}"))
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.pattern) if f is not None]
        except ValueError as exc:
            return out + [(f"{path}.pattern", f"not a valid pattern: {exc}")]
        for f in fields:
            if f not in PLACEHOLDERS:
                out.append((f"{path}.pattern", f"unknown placeholder {{{f}}}; placeholders: "
                                               + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)))
            elif f in ("pivot", "x") and self.pivot is None:
                out.append((f"{path}.pattern", f"{{{f}}} needs a pivot"))
        if "lang" not in fields:
            out.append((f"{path}.pattern", "must contain {lang}: each side is its own file"))
        return out


def _ordered(entry: PairsSpec) -> list[tuple[str, str, bool]]:
    """(src, tgt, is the reverse of a requested direction) for every direction of the entry."""
    if entry.pivot is None:
        return [(a, b, False) for a in entry.langs for b in entry.langs if a != b]
    out = []
    for x in entry.langs:
        if not entry.to_pivot:
            out.append((entry.pivot, x, False))
        if entry.both or entry.to_pivot:
            out.append((x, entry.pivot, entry.both))
    return out


def _group(entry: PairsSpec, src: str, tgt: str, train_pairs: int | None) -> tuple[str | None, str | None]:
    """(group, problem) for one direction."""
    if entry.group_by_size is not None:
        assert train_pairs is not None
        fits = [(t, g) for g, t in entry.group_by_size.items() if t <= train_pairs]
        if not fits:
            return None, f"{train_pairs} training pairs, below every group_by_size threshold"
        return max(fits)[1], None
    if isinstance(entry.group, dict):
        for key in _group_keys(entry, src, tgt):
            if key in entry.group:
                return entry.group[key], None
        return None, None
    return entry.group, None


def _group_keys(entry: PairsSpec, src: str, tgt: str) -> list[str]:
    """What a `group:` map may name a direction by: itself, or (with a pivot) its other language."""
    return [f"{src}-{tgt}"] + ([tgt if src == entry.pivot else src] if entry.pivot is not None else [])


def _file(base: Path, f: str) -> Path:
    return Path(f) if Path(f).is_absolute() else base / f


def training_lines(spec: SourceSpec) -> int:
    """The lines of a training split's source file, remembered in the cache by the file's stat
    (`fingerprints.stat_key`), so that a manifest sized by `group_by_size` reads its files once, not
    on every load (each rank, `mmtc eval`, the recipe check)."""
    key = stat_key(spec)
    record = Path(os.environ.get("MMTC_CACHE") or Path.home() / ".cache" / "mmtc") / "linecounts" / f"{key}.json"
    if key is not None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            return int(json.loads(record.read_text())["lines"])
    n = count_lines(Path(spec.src or ""))
    if key is not None:
        with contextlib.suppress(OSError):
            record.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(record, json.dumps({"lines": n, "file": spec.src}) + "\n")
    return n


def count_lines(path: Path) -> int:
    """Lines of a text file, counted in 4 MiB blocks (a last line without a newline counts)."""
    n, last = 0, b"\n"
    with open(path, "rb", buffering=0) as f:
        while block := f.read(1 << 22):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def expand_pairs(entry: PairsSpec, path: str, base: Path) -> tuple[list[tuple[DirectionSpec, str]], Check]:
    """The entry's directions, each with where it came from ("pairs[0] (eng-deu)"), and every
    problem with the files (missing, one-sided) as (key path, message)."""
    own = entry.problems(path)
    if own:  # nothing to expand safely
        return [], own
    made: list[tuple[DirectionSpec, str]] = []
    problems: Check = []
    map_keys = set(entry.group) if isinstance(entry.group, dict) else set()
    used: set[str] = set()
    for src, tgt, is_reverse in _ordered(entry):
        name = f"{src}-{tgt}"
        spec_of: dict[str, SourceSpec] = {}
        bad = False
        for split in SPLIT_NAMES:
            file_split = entry.splits.get(split)
            if not file_split or (split == "train" and entry.eval_only):
                continue
            files = {}
            for side, lang in (("src", src), ("tgt", tgt)):
                other = tgt if src == entry.pivot else src
                f = entry.pattern.format(lang=lang, split=file_split, src=src, tgt=tgt, pivot=entry.pivot or "",
                                         x=other, pair="-".join(sorted((src, tgt))))
                p = _file(base, f)
                files[side] = p
                if not p.is_file():
                    bad = True
                    if is_reverse:
                        fwd = entry.pattern.format(lang=lang, split=file_split, src=tgt, tgt=src,
                                                   pivot=entry.pivot or "", x=other, pair="-".join(sorted((src, tgt))))
                        hint = (f"; the files are one-sided: {fwd} exists for {tgt}-{src} but not this one"
                                if _file(base, fwd).is_file() else "")
                        problems.append((f"{path}.pattern", f"{name} (the reverse asked for by both: true), "
                                         f"{split}, language {lang}: no file {p}{hint}"))
                    else:
                        problems.append((f"{path}.pattern", f"{name} {split}, language {lang}: no file {p}"))
            spec_of[split] = SourceSpec(src=str(files["src"].resolve()), tgt=str(files["tgt"].resolve()))
        if bad:
            continue
        pairs = training_lines(spec_of["train"]) if entry.group_by_size is not None else None
        group, why = _group(entry, src, tgt, pairs)
        if why:
            problems.append((f"{path}.group_by_size", f"{name}: {why}"))
        used.update(k for k in _group_keys(entry, src, tgt) if k in map_keys)
        d = DirectionSpec(src=src, tgt=tgt, dev=spec_of["dev"], train=spec_of.get("train"), test=spec_of.get("test"),
                          group=group, eval_only=entry.eval_only)
        problems += d.check(path)
        made.append((d, f"{path} ({name})"))
    if not problems:
        for key in sorted(map_keys - used):
            problems.append((f"{path}.group.{key}", f"{key!r} is neither a language nor a direction of this entry"))
    return made, problems
