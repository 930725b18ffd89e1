"""Tokenised splits on disk: flat int32 token arrays plus offsets, memory-mapped on load."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_FILES = ("src", "src_off", "tgt", "tgt_off", "lines")


@dataclass
class TokenSplit:
    """One direction's split: ragged token arrays (no tags, bos or eos) and pair provenance."""

    src: np.ndarray
    src_off: np.ndarray
    tgt: np.ndarray
    tgt_off: np.ndarray
    lines: np.ndarray  # line/row number of each pair in its source file
    texts: dict[str, list[str]] | None = None  # raw src/tgt strings, kept for dev and test
    meta: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.src_off) - 1

    @property
    def src_lens(self) -> np.ndarray:
        return np.diff(self.src_off)

    @property
    def tgt_lens(self) -> np.ndarray:
        return np.diff(self.tgt_off)

    def src_ids(self, i: int) -> np.ndarray:
        return self.src[self.src_off[i] : self.src_off[i + 1]]

    def tgt_ids(self, i: int) -> np.ndarray:
        return self.tgt[self.tgt_off[i] : self.tgt_off[i + 1]]

    @property
    def num_tokens(self) -> int:
        return int(self.src_off[-1] + self.tgt_off[-1])


def ragged(seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    off = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lens, out=off[1:])
    flat = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(off[-1]))
    return flat, off


def save_split(path: Path, split: TokenSplit) -> None:
    """Write into a temporary sibling, then rename: a crash never leaves a half entry in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        for name in _FILES:
            np.save(tmp / f"{name}.npy", getattr(split, name))
        if split.texts is not None:
            (tmp / "texts.json").write_text(json.dumps(split.texts, ensure_ascii=False))
        (tmp / "meta.json").write_text(json.dumps(split.meta or {}, indent=1))
        try:
            os.replace(tmp, path)
        except OSError:
            if not (path / "meta.json").is_file():
                raise
            # Another process (a concurrent run sharing the cache) wrote the same entry first.
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_split(path: Path) -> TokenSplit | None:
    if not (path / "meta.json").is_file():
        return None
    arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in _FILES}
    texts_file = path / "texts.json"
    texts = json.loads(texts_file.read_text()) if texts_file.is_file() else None
    meta = json.loads((path / "meta.json").read_text())
    return TokenSplit(**arrays, texts=texts, meta=meta)
