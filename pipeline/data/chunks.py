"""A training split as a sequence of chunks of `CHUNK` pairs that any process can read on its own.

`open_source` makes the first pass (`scan.py` for files; a batched read of the rows for the
`datasets` formats): the split's fingerprint, pair count and, for files, the byte range of each
chunk. `read_chunk` then reads chunk k alone: the byte ranges of its lines in the file(s), or rows
[k·CHUNK, (k+1)·CHUNK) of the memory-mapped Arrow table, decoded and parsed exactly as
`corpus.read_split` does (invalid lines become None; tsv/jsonl records are parsed, each bad one
named by file:line), so no process ever holds more than a chunk of a split's text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from pipeline.data.corpus import (
    MAX_LISTED,
    DataError,
    _hasher,
    decode_lines,
    load_dataset_source,
    parse_records,
    record_fields,
)
from pipeline.data.manifest import SourceSpec
from pipeline.data.scan import FileScan, scan_file

CHUNK = 20_000  # pairs per chunk: small enough to bound a worker's lists, large enough to amortise a task

# `datasets` sources opened in this process, by key: forked workers inherit them (memory-mapped)
_DATASETS: dict[str, Any] = {}


@dataclass(frozen=True)
class ChunkSource:
    """What a worker needs to read a split's chunks (small and picklable)."""

    spec: SourceSpec
    where: str  # "eng-deu train"
    pairs: int  # lines (text, tsv, jsonl) or rows, the invalid ones included
    fingerprint: str
    files: tuple[FileScan, ...] = ()  # text: (src, tgt); tsv, jsonl: (file,)
    dataset: str = ""  # key into _DATASETS
    chunk: int = CHUNK  # pairs per chunk (the scan cut the files by it)

    @property
    def chunks(self) -> int:
        return -(-self.pairs // self.chunk)

    @property
    def origin(self) -> str:
        return self.spec.describe()

    @property
    def stripped(self) -> dict[str, int]:
        boms = sum(f.bom for f in self.files)
        return {"bom": boms} if boms else {}


def open_source(spec: SourceSpec, on_invalid: str, where: str) -> ChunkSource:
    """First pass over a split; raises DataError listing every problem this pass can see (missing
    files, invalid lines in error mode, line counts that differ, a missing field)."""
    errors: list[str] = []
    if spec.format == "text":
        assert spec.src is not None and spec.tgt is not None
        h = _hasher("text")
        scans = [scan_file(p, on_invalid, errors, h, CHUNK) for p in (spec.src, spec.tgt)]
        if scans[0] is not None and scans[1] is not None and scans[0].lines != scans[1].lines and not errors:
            errors.append(f"{where}: line counts differ: {spec.src} has {scans[0].lines} lines, "
                          f"{spec.tgt} has {scans[1].lines} lines")
        if errors:
            raise DataError(errors)
        files = tuple(s for s in scans if s is not None)
        return ChunkSource(spec, where, files[0].lines, h.hexdigest(), files, chunk=CHUNK)
    if spec.format in ("tsv", "jsonl"):
        assert spec.path is not None
        h = _hasher(spec.format)
        scan = scan_file(spec.path, on_invalid, errors, h, CHUNK)
        if errors or scan is None:
            raise DataError(errors)
        for part in record_fields(spec):
            h.update(part.encode() + b"\0")
        return ChunkSource(spec, where, scan.lines, h.hexdigest(), (scan,), chunk=CHUNK)
    return _open_dataset(spec, where)


def _open_dataset(spec: SourceSpec, where: str) -> ChunkSource:
    errors: list[str] = []
    ds = load_dataset_source(spec, errors)
    if errors:
        raise DataError(errors)
    h = hashlib.blake2b(digest_size=16)  # the loaded text itself, as `corpus.read_split` hashes it
    for a in range(0, len(ds), CHUNK):
        src, tgt, problems = _dataset_rows(ds, spec, a, min(len(ds), a + CHUNK))
        if problems:
            raise DataError(problems)
        h.update("".join(f"{s}\t{t}\n" for s, t in zip(src, tgt)).encode())
    key = f"{spec.describe()}#{len(_DATASETS)}"
    _DATASETS[key] = ds
    return ChunkSource(spec, where, len(ds), _hasher(spec.describe(), h.hexdigest()).hexdigest(), dataset=key,
                       chunk=CHUNK)


def _dataset_rows(ds: Any, spec: SourceSpec, a: int, b: int) -> tuple[list[str], list[str], list[str]]:
    """Rows [a, b) as (src, tgt) strings (None read as ""), or a problem naming the missing field."""
    batch = ds[a:b]
    out: list[list[str]] = []
    for dotted in (spec.src_field or "", spec.tgt_field or ""):
        head, *rest = dotted.split(".")
        if head not in batch:
            return [], [], [f"{spec.describe()} row {a + 1}: field {dotted!r} not found (fields: {sorted(batch)})"]
        col = batch[head]
        for part in rest:
            if col and not (isinstance(col[0], dict) and part in col[0]):
                return [], [], [f"{spec.describe()} row {a + 1}: field {dotted!r} not found"]
            col = [r[part] for r in col]
        out.append(["" if v is None else str(v) for v in col])
    return out[0], out[1], []


@dataclass
class Chunk:
    src: list[str | None]  # None: an invalid line (counted as invalid_utf8 and dropped)
    tgt: list[str | None]
    first: int  # 0-based index of the chunk's first pair in the split
    problems: list[str]  # bad records (at most MAX_LISTED) ...
    bad: int  # ... of this many


def _lines(scan: FileScan, k: int) -> list[str | None]:
    a, b = scan.range_of(k)
    with open(scan.path, "rb") as f:
        f.seek(a)
        body = f.read(b - a)
    if body.endswith(b"\n"):
        body = body[:-1]
    return decode_lines(body) if b > a else []


def read_chunk(source: ChunkSource, k: int) -> Chunk:
    """Chunk k of a split, read by whichever process calls this."""
    first = k * source.chunk
    spec = source.spec
    if spec.format == "text":
        return Chunk(_lines(source.files[0], k), _lines(source.files[1], k), first, [], 0)
    if spec.format in ("tsv", "jsonl"):
        pairs, problems, bad = parse_records(spec, _lines(source.files[0], k), first + 1)
        return Chunk([s for s, _ in pairs], [t for _, t in pairs], first, problems[:MAX_LISTED], bad)
    src, tgt, problems = _dataset_rows(_DATASETS[source.dataset], spec, first, min(source.pairs, first + source.chunk))
    return Chunk(list(src), list(tgt), first, problems, len(problems))


def merge_problems(chunks_problems: list[tuple[list[str], int]], path: str) -> list[str]:
    """The first MAX_LISTED bad records of a split, then "... and N more", from its chunks'."""
    listed = [p for ps, _ in chunks_problems for p in ps][:MAX_LISTED]
    bad = sum(n for _, n in chunks_problems)
    return listed + ([f"{path}: ... and {bad - MAX_LISTED} more bad records"] if bad > MAX_LISTED else [])
