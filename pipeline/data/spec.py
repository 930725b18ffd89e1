"""One direction of a corpus and where each of its splits is read from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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


ZERO_SHOT = "zero-shot"  # the group of eval-only directions that name none


def simple_name(v: str) -> bool:
    return bool(v) and v.replace("_", "").replace("-", "").isalnum()


@dataclass
class DirectionSpec:
    src: str
    tgt: str
    dev: SourceSpec
    train: SourceSpec | None = None
    test: SourceSpec | None = None
    group: str | None = None
    # never sampled, scored at every evaluation; a `train` given anyway is not read (a direction
    # held out as zero-shot without editing its files)
    eval_only: bool = False
    origin: str = field(default="", init=False, compare=False)  # "directions[2]" or "pairs[0] (eng-deu)"

    @property
    def name(self) -> str:
        return f"{self.src}-{self.tgt}"

    @property
    def trains(self) -> bool:
        return self.train is not None and not self.eval_only

    def split(self, split: str) -> SourceSpec | None:
        """The source of `split` this corpus reads (an eval-only direction's train is not)."""
        return None if split == "train" and not self.trains else getattr(self, split)

    def check(self, path: str) -> Check:
        out: Check = []
        for k in ("src", "tgt"):
            v = getattr(self, k)
            if not v or not v.replace("_", "").isalnum():
                out.append((f"{path}.{k}", f"a language code of letters/digits/_, got {v!r}"))
        if self.src == self.tgt:
            out.append((f"{path}.tgt", "must differ from src"))
        if self.group is not None and (self.group == "all" or not simple_name(self.group)):
            out.append((f"{path}.group", f"a name of letters, digits, _ and - other than 'all', got {self.group!r}"))
        return out
