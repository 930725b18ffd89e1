"""The corpus manifest: which directions exist and where each split's pairs come from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.core.typed_yaml import ConfigError, bind, load_yaml_file

Check = list[tuple[str, str]]

FORMATS = ("text", "tsv", "jsonl", "datasets", "disk", "hub")


@dataclass
class SourceSpec:
    """One split of one direction.

    text:     `src` and `tgt`, two line-aligned plain-text files.
    tsv:      `path`, with `src_column` / `tgt_column` (0-based).
    jsonl:    `path`, with `src_field` / `tgt_field` (dotted, e.g. translation.en).
    datasets: `builder` (parquet, arrow, json, csv) and `path` (data files, glob allowed), `split`.
    disk:     `path` written by `Dataset.save_to_disk`, `split` if it is a DatasetDict.
    hub:      `name`, `config`, `split` on the Hugging Face Hub (needs internet).
    """

    format: Literal["text", "tsv", "jsonl", "datasets", "disk", "hub"] = "text"
    src: str | None = None
    tgt: str | None = None
    path: str | None = None
    src_column: int = 0
    tgt_column: int = 1
    src_field: str | None = None
    tgt_field: str | None = None
    builder: str | None = None
    name: str | None = None
    config: str | None = None
    split: str | None = None

    def check(self, path: str) -> Check:
        need = {
            "text": ("src", "tgt"),
            "tsv": ("path",),
            "jsonl": ("path", "src_field", "tgt_field"),
            "datasets": ("builder", "path", "src_field", "tgt_field"),
            "disk": ("path", "src_field", "tgt_field"),
            "hub": ("name", "split", "src_field", "tgt_field"),
        }[self.format]
        out = [(f"{path}.{k}", f"required for format {self.format!r}") for k in need if getattr(self, k) is None]
        if self.format == "tsv" and self.src_column == self.tgt_column:
            out.append((f"{path}.tgt_column", "must differ from src_column"))
        return out

    def describe(self) -> str:
        if self.format == "text":
            return f"{self.src} | {self.tgt}"
        if self.format == "hub":
            return f"hub:{self.name}/{self.config or ''}[{self.split}]"
        return f"{self.format}:{self.path}"


@dataclass
class DirectionSpec:
    src: str
    tgt: str
    train: SourceSpec
    dev: SourceSpec
    test: SourceSpec | None = None
    group: str | None = None

    @property
    def name(self) -> str:
        return f"{self.src}-{self.tgt}"

    def check(self, path: str) -> Check:
        out: Check = []
        for k in ("src", "tgt"):
            v = getattr(self, k)
            if not v or not v.replace("_", "").isalnum():
                out.append((f"{path}.{k}", f"a language code of letters/digits/_, got {v!r}"))
        if self.src == self.tgt:
            out.append((f"{path}.tgt", "must differ from src"))
        if self.group is not None and (self.group == "all" or not self.group.replace("_", "").isalnum()):
            out.append((f"{path}.group", f"a simple name other than 'all', got {self.group!r}"))
        return out


@dataclass
class Manifest:
    directions: list[DirectionSpec]
    name: str = "corpus"

    def check(self, path: str) -> Check:
        names = [d.name for d in self.directions]
        dup = sorted({n for n in names if names.count(n) > 1})
        out: Check = [("directions", f"repeated directions: {', '.join(dup)}")] if dup else []
        if not self.directions:
            out.append(("directions", "must list at least one direction"))
        return out

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.directions]

    @property
    def languages(self) -> list[str]:
        langs: list[str] = []
        for d in self.directions:
            for lang in (d.src, d.tgt):
                if lang not in langs:
                    langs.append(lang)
        return langs

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for d in self.directions:
            if d.group:
                out.setdefault(d.group, []).append(d.name)
        return out

    def select(self, selectors: list[str]) -> list[str]:
        """Direction names chosen by `all`, `group:NAME` or direction names, in manifest order."""
        groups = self.groups()
        chosen: set[str] = set()
        errors = []
        for s in selectors:
            if s == "all":
                chosen.update(self.names)
            elif s.startswith("group:"):
                g = s.split(":", 1)[1]
                if g not in groups:
                    errors.append(f"unknown group {g!r} (groups: {', '.join(sorted(groups)) or 'none'})")
                chosen.update(groups.get(g, []))
            elif s in self.names:
                chosen.add(s)
            else:
                errors.append(f"unknown direction {s!r} (directions: {', '.join(self.names)})")
        if errors:
            raise ConfigError(errors)
        return [n for n in self.names if n in chosen]


def resolve_paths(manifest: Manifest, base: Path) -> None:
    """Make file paths absolute, relative to the manifest's folder."""
    for d in manifest.directions:
        for spec in (d.train, d.dev, d.test):
            if spec is None or spec.format == "hub":
                continue
            for attr in ("src", "tgt", "path"):
                v = getattr(spec, attr)
                if v is not None and not Path(v).is_absolute() and "://" not in v:
                    setattr(spec, attr, str((base / v).resolve()))


def load_manifest(path: str | Path) -> Manifest:
    data, lines = load_yaml_file(path)
    manifest = bind(Manifest, data, lines)
    resolve_paths(manifest, Path(path).resolve().parent)
    return manifest
