"""Tokenised splits on disk: flat token and offset arrays grown by appends, memory-mapped on load.

An entry is a directory of raw little-endian arrays (`src.bin`, `tgt.bin`: int32 token ids;
`src_off.bin`, `tgt_off.bin`: int64 offsets, one more than pairs; `lines.bin`: int64 source line
of each pair), a small `index.json` (format, pairs, the largest and summed padded size, so a
planner needs no pass over the lengths), `meta.json` (what was seen and dropped) and, for dev and
test, `texts.json`. `SplitWriter` appends chunk after chunk into a temporary sibling directory and
renames it into place on commit, so a corpus of any size is written with bounded memory and a
crash never leaves a half entry in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

FORMAT = 3  # 3: raw .bin arrays grown by appends plus index.json (2 was one .npy per array)
_DTYPES = {"src": np.int32, "src_off": np.int64, "tgt": np.int32, "tgt_off": np.int64, "lines": np.int64}
_SLICE = 1 << 20  # pairs per slice when a statistic must be computed from the offsets


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
    index: dict[str, Any] | None = None  # written by SplitWriter: pairs, size_max, size_sum

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


def padded_sizes(src_lens: np.ndarray, tgt_lens: np.ndarray) -> np.ndarray:
    """A pair's size in a padded batch: tag + source + eos, or bos + target."""
    return np.maximum(src_lens + 2, tgt_lens + 1)


def pair_sizes(split: TokenSplit, idx: np.ndarray) -> np.ndarray:
    """`padded_sizes` of the pairs at `idx`, gathered from the (memory-mapped) offsets."""
    idx = np.asarray(idx, dtype=np.int64)
    return padded_sizes(split.src_off[idx + 1] - split.src_off[idx], split.tgt_off[idx + 1] - split.tgt_off[idx])


def size_stats(split: TokenSplit) -> tuple[int, float]:
    """(largest, mean) padded size over the split: from its index, else slice by slice."""
    if split.index is not None and "size_max" in split.index:
        return int(split.index["size_max"]), split.index["size_sum"] / max(1, split.index["pairs"])
    big, total = 0, 0
    for a in range(0, len(split), _SLICE):
        b = min(len(split), a + _SLICE)
        s = padded_sizes(np.diff(split.src_off[a:b + 1]), np.diff(split.tgt_off[a:b + 1]))
        big, total = max(big, int(s.max())), total + int(s.sum())
    return big, total / max(1, len(split))


def ragged(seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    off = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lens, out=off[1:])
    flat = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(off[-1]))
    return flat, off


class SplitWriter:
    """Builds one cache entry by appends; `commit` publishes it, leaving the context without a
    commit (an error, an interrupt) removes the temporary directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        # closed by commit() or __exit__: the writer is the context manager
        self.files: dict[str, BinaryIO] = {k: open(self.tmp / f"{k}.bin", "wb") for k in _DTYPES}  # noqa: SIM115
        self.base = {"src": 0, "tgt": 0}
        self.pairs, self.size_max, self.size_sum = 0, 0, 0
        zero = np.zeros(1, dtype=np.int64).tobytes()
        self.files["src_off"].write(zero)
        self.files["tgt_off"].write(zero)

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        for f in self.files.values():
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def append(self, src: np.ndarray, src_lens: np.ndarray, tgt: np.ndarray, tgt_lens: np.ndarray,
               lines: np.ndarray) -> None:
        """Kept pairs: flat ids and the length of each pair's side, and their source lines."""
        for side, ids, lens in (("src", src, src_lens), ("tgt", tgt, tgt_lens)):
            self.files[side].write(np.ascontiguousarray(ids, dtype=np.int32).tobytes())
            off = self.base[side] + np.cumsum(lens, dtype=np.int64)
            self.files[f"{side}_off"].write(off.tobytes())
            self.base[side] = int(off[-1]) if len(off) else self.base[side]
        self.files["lines"].write(np.ascontiguousarray(lines, dtype=np.int64).tobytes())
        if len(lines):
            sizes = padded_sizes(np.asarray(src_lens), np.asarray(tgt_lens))
            self.size_max, self.size_sum = max(self.size_max, int(sizes.max())), self.size_sum + int(sizes.sum())
        self.pairs += len(lines)

    def commit(self, texts: dict[str, list[str]] | None, meta: dict[str, Any]) -> None:
        for f in self.files.values():
            f.close()
        if texts is not None:
            (self.tmp / "texts.json").write_text(json.dumps(texts, ensure_ascii=False))
        index = {"format": FORMAT, "pairs": self.pairs, "size_max": self.size_max, "size_sum": self.size_sum}
        (self.tmp / "index.json").write_text(json.dumps(index) + "\n")
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(self.tmp, self.path)
        except OSError:
            if not (self.path / "meta.json").is_file():
                raise
            # Another process (a concurrent run sharing the cache) wrote the same entry first.


def save_split(path: Path, split: TokenSplit) -> None:
    """Write a whole in-memory split as one entry (atomically, as `SplitWriter` does)."""
    with SplitWriter(path) as w:
        w.append(np.asarray(split.src), split.src_lens, np.asarray(split.tgt), split.tgt_lens, np.asarray(split.lines))
        w.commit(split.texts, split.meta or {})


def _array(path: Path, dtype: Any) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def load_split(path: Path) -> TokenSplit | None:
    if not (path / "meta.json").is_file() or not (path / "index.json").is_file():
        return None
    index = json.loads((path / "index.json").read_text())
    if index.get("format") != FORMAT:
        return None
    arrays = {name: _array(path / f"{name}.bin", dtype) for name, dtype in _DTYPES.items()}
    texts_file = path / "texts.json"
    texts = json.loads(texts_file.read_text()) if texts_file.is_file() else None
    meta = json.loads((path / "meta.json").read_text())
    return TokenSplit(**arrays, texts=texts, meta=meta, index=index)
