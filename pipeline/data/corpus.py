"""Read one split of one direction into aligned string pairs, loudly.

Text formats are read as bytes and split on b"\\n" only, so a \\r, U+2028 or U+0085 inside a line
never shifts the alignment. Every problem names its file and line; lines dropped on request
(`on_invalid: skip`) are counted, never lost silently.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.data.manifest import SourceSpec

MAX_LISTED = 5  # problems listed per file before "... and N more"


class DataError(ValueError):
    """Problems with the corpus itself (not the recipe); all of them, each with its location."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__(f"{len(errors)} data error(s):\n" + "\n".join(f"  - {e}" for e in errors))


@dataclass
class RawSplit:
    src: list[str]
    tgt: list[str]
    lines: list[int]  # 1-based line (or row) number of each kept pair in its source
    dropped: Counter[str] = field(default_factory=Counter)
    fingerprint: str = ""
    origin: str = ""
    stripped: Counter[str] = field(default_factory=Counter)  # kept, but cleaned on read (a BOM)


def _hasher(*parts: str) -> Any:
    """A split's fingerprint under way: each part, then b"\\0" (file bytes are added the same way as
    they are read)."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode() + b"\0")
    return h


def line_problem(line: bytes) -> str:
    """Why a line is invalid ("" when it is not): a NUL byte, which no text holds, or bad UTF-8."""
    if b"\0" in line:
        return f"NUL byte at column {line.index(0) + 1}"
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})"
    return ""


def decode_lines(body: bytes) -> list[str | None]:
    """The lines of `body` (joined by b"\n"), each decoded, or None where `line_problem` finds one."""
    if b"\0" not in body:
        try:
            return body.decode("utf-8").split("\n")
        except UnicodeDecodeError:
            pass
    return [None if line_problem(line) else line.decode("utf-8") for line in body.split(b"\n")]


class _LineDecoder:
    """Decodes a file's lines chunk by chunk; invalid ones (bad UTF-8, or a NUL byte, which no text
    holds) become None (skip mode) or errors (error mode), numbered from the file's first line."""

    def __init__(self, path: str, on_invalid: str, errors: list[str]) -> None:
        self.path, self.on_invalid, self.errors = path, on_invalid, errors
        self.out: list[str | None] = []
        self.bad = 0

    def feed(self, body: bytes) -> None:
        """`body`: whole lines joined by b"\\n" (without the last one's newline)."""
        if b"\0" not in body:
            try:
                self.out.extend(body.decode("utf-8").split("\n"))
                return
            except UnicodeDecodeError:
                pass
        first = len(self.out) + 1
        for i, line in enumerate(body.split(b"\n"), first):
            why = line_problem(line)
            if not why:
                self.out.append(line.decode("utf-8"))
                continue
            self.bad += 1
            self.out.append(None)
            if self.on_invalid == "error" and self.bad <= MAX_LISTED:
                self.errors.append(f"{self.path}:{i}: {why}")

    def close(self) -> list[str | None]:
        if self.on_invalid == "error" and self.bad > MAX_LISTED:
            self.errors.append(f"{self.path}: ... and {self.bad - MAX_LISTED} more invalid lines (UTF-8 or NUL)")
        return self.out


BOM = b"\xef\xbb\xbf"
READ_CHUNK = 16 << 20  # bytes read at a time: the file's bytes are never all in memory at once


def _read_text_file(path: str, on_invalid: str, errors: list[str], digest: Any,
                    stripped: Counter[str] | None = None) -> list[str | None]:
    """The file's lines, split on b"\\n" only (a last line without a newline counts); its bytes,
    then b"\\0", go into `digest` (a hashlib object) as they are read."""
    p = Path(path)
    if not p.is_file():
        errors.append(f"{path}: file not found")
        return []
    decoder = _LineDecoder(path, on_invalid, errors)
    carry = b""
    with open(p, "rb") as f:
        first = True
        while chunk := f.read(max(READ_CHUNK, len(BOM)) if first else READ_CHUNK):  # the BOM in one piece
            digest.update(chunk)
            if first:
                first = False
                if chunk.startswith(BOM):  # an editor's byte-order mark is not part of the first sentence
                    chunk = chunk[len(BOM):]
                    if stripped is not None:
                        stripped["bom"] += 1
            data = carry + chunk
            end = data.rfind(b"\n")
            if end < 0:
                carry = data
                continue
            decoder.feed(data[:end])
            carry = data[end + 1:]
    digest.update(b"\0")
    if carry:
        decoder.feed(carry)
    return decoder.close()


def _field(record: Any, dotted: str) -> Any:
    cur = record
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise KeyError(dotted)
        cur = cur[part]
    return cur


def read_split(spec: SourceSpec, on_invalid: str, where: str) -> RawSplit:
    """Read a split; raise DataError listing every problem found in it."""
    errors: list[str] = []
    stripped: Counter[str] = Counter()
    if spec.format == "text":
        assert spec.src is not None and spec.tgt is not None
        h = _hasher("text")
        src = _read_text_file(spec.src, on_invalid, errors, h, stripped)
        tgt = _read_text_file(spec.tgt, on_invalid, errors, h, stripped)
        if not errors and len(src) != len(tgt):
            errors.append(
                f"{where}: line counts differ: {spec.src} has {len(src)} lines, {spec.tgt} has {len(tgt)} lines"
            )
        fp = h.hexdigest()
        pairs: list[tuple[str | None, str | None]] = list(zip(src, tgt))
    elif spec.format in ("tsv", "jsonl"):
        assert spec.path is not None
        h = _hasher(spec.format)
        lines = _read_text_file(spec.path, on_invalid, errors, h, stripped)
        pairs, problems, bad = parse_records(spec, lines, 1)
        errors.extend(problems[:MAX_LISTED])
        if bad > MAX_LISTED:
            errors.append(f"{spec.path}: ... and {bad - MAX_LISTED} more bad records")
        for part in record_fields(spec):
            h.update(part.encode() + b"\0")
        fp = h.hexdigest()
    else:
        pairs, fp = _read_with_datasets(spec, errors)
    if errors:
        raise DataError(errors)
    out = RawSplit([], [], [], Counter(), fp, spec.describe(), stripped)
    for i, (s, t) in enumerate(pairs, 1):
        if s is None or t is None:
            out.dropped["invalid_utf8"] += 1
            continue
        s, t = s.strip(), t.strip()
        out.src.append(s)
        out.tgt.append(t)
        out.lines.append(i)
    return out


def record_fields(spec: SourceSpec) -> tuple[str, ...]:
    """What selects a record's two sides: part of a tsv/jsonl split's fingerprint."""
    return (spec.src_field or "", spec.tgt_field or "", str(spec.src_column), str(spec.tgt_column))


def parse_records(
    spec: SourceSpec, lines: list[str | None], first: int
) -> tuple[list[tuple[str | None, str | None]], list[str], int]:
    """(pairs, problems, bad): one pair per line (None, None for an invalid line or a bad record),
    numbered from `first`; the first MAX_LISTED bad records are named by file:line."""
    path = spec.path
    out: list[tuple[str | None, str | None]] = []
    problems: list[str] = []
    bad = 0
    for i, line in enumerate(lines, first):
        if line is None:
            out.append((None, None))
            continue
        why = ""
        try:
            if spec.format == "tsv":
                cols = line.split("\t")
                out.append((cols[spec.src_column], cols[spec.tgt_column]))
            else:
                rec = json.loads(line)
                out.append((str(_field(rec, spec.src_field or "")), str(_field(rec, spec.tgt_field or ""))))
            continue
        except IndexError:
            why = (f"has {len(line.split(chr(9)))} tab-separated columns, "
                   f"needs column {max(spec.src_column, spec.tgt_column)}")
        except json.JSONDecodeError as exc:
            why = f"invalid JSON ({exc.msg})"
        except KeyError as exc:
            why = f"field {exc.args[0]!r} not found"
        bad += 1
        out.append((None, None))
        if len(problems) < MAX_LISTED:
            problems.append(f"{path}:{i}: {why}")
    return out, problems, bad


def load_dataset_source(spec: SourceSpec, errors: list[str]) -> Any:
    """The split as a `datasets.Dataset` (memory-mapped Arrow), or None with an error."""
    import datasets  # heavy import, only for these formats

    try:
        if spec.format == "disk":
            ds: Any = datasets.load_from_disk(spec.path)
            if isinstance(ds, datasets.DatasetDict):
                if spec.split is None or spec.split not in ds:
                    errors.append(f"{spec.path}: a DatasetDict; set split to one of {sorted(ds)}")
                    return None
                ds = ds[spec.split]
        elif spec.format == "datasets":
            ds = datasets.load_dataset(spec.builder, data_files=spec.path, split=spec.split or "train")
        else:
            ds = datasets.load_dataset(spec.name, spec.config, split=spec.split)
    except Exception as exc:  # datasets raises many types; the user needs the message and the source
        errors.append(f"{spec.describe()}: could not load with the datasets library: {type(exc).__name__}: {exc}")
        return None
    return ds


def _read_with_datasets(spec: SourceSpec, errors: list[str]) -> tuple[list[tuple[str | None, str | None]], str]:
    ds = load_dataset_source(spec, errors)
    if ds is None:
        return [], ""
    pairs: list[tuple[str | None, str | None]] = []
    for i, rec in enumerate(ds, 1):
        try:
            s, t = _field(rec, spec.src_field or ""), _field(rec, spec.tgt_field or "")
        except KeyError as exc:
            errors.append(f"{spec.describe()} row {i}: field {exc.args[0]!r} not found (fields: {sorted(rec)})")
            break
        pairs.append(("" if s is None else str(s), "" if t is None else str(t)))
    # Hash the loaded text itself: datasets' own fingerprints can follow paths and mtimes.
    h = hashlib.blake2b(digest_size=16)
    for s, t in pairs:
        h.update(f"{s}\t{t}\n".encode())
    return pairs, _hasher(spec.describe(), h.hexdigest()).hexdigest()
