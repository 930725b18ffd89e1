"""The first, byte-level pass over a training split: its fingerprint, its line count, where each
chunk of lines starts and every invalid line, with bounded memory and no per-line Python work.

A file is read in blocks of `READ_CHUNK` bytes; each block's bytes go into the fingerprint as they
are read (the same bytes in the same order as `corpus.read_split` hashes them, so a split has one
fingerprint whichever path read it), its newlines are found with numpy, and the part up to its
last newline is decoded in one call: only a block that fails to decode (or holds a NUL) is looked
at line by line, to name each bad line. The byte offset of every `lines_per_chunk`-th line is kept,
so later passes can hand each worker process its own range of lines to read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.corpus import BOM, MAX_LISTED, READ_CHUNK, line_problem


@dataclass
class FileScan:
    path: str
    lines: int = 0  # a last line without a newline counts, as in `corpus.read_split`
    size: int = 0  # bytes, the byte-order mark included
    starts: list[int] = field(default_factory=list)  # byte offset of line k * lines_per_chunk
    bom: bool = False
    bad: int = 0  # invalid lines (UTF-8 or NUL)

    def range_of(self, k: int) -> tuple[int, int]:
        """Bytes [start, end) of chunk k."""
        return self.starts[k], self.starts[k + 1] if k + 1 < len(self.starts) else self.size


def scan_file(path: str, on_invalid: str, errors: list[str], digest: Any, lines_per_chunk: int) -> FileScan | None:
    """Scan one file (None, with an error, when it does not exist); its bytes, then b"\\0", go into
    `digest`."""
    p = Path(path)
    if not p.is_file():
        errors.append(f"{path}: file not found")
        return None
    out = FileScan(path)
    listed: list[str] = []
    newlines = 0  # seen so far
    pos = 0  # file offset of the first byte of `carry`
    carry = b""
    with open(p, "rb") as f:
        first = True
        while block := f.read(max(READ_CHUNK, len(BOM)) if first else READ_CHUNK):
            digest.update(block)
            out.size += len(block)
            if first:
                first = False
                if block.startswith(BOM):
                    block, pos, out.bom = block[len(BOM):], len(BOM), True
                out.starts.append(pos)
            data = carry + block
            nl = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
            if not len(nl):
                carry = data
                continue
            # the line after the newline with 0-based index g is line g + 1
            after = newlines + 1 + np.arange(len(nl))
            out.starts.extend((pos + nl[after % lines_per_chunk == 0] + 1).tolist())
            end = int(nl[-1])
            out.bad += _check(data[:end], newlines + 1, on_invalid, listed, path)  # carry holds no newline
            newlines += len(nl)
            carry = data[end + 1:]
            pos += end + 1
    digest.update(b"\0")
    if out.starts and out.starts[-1] >= out.size and len(out.starts) > 1:
        out.starts.pop()  # the file ends exactly at a chunk boundary: no empty last chunk
    if carry:
        out.bad += _check(carry, newlines + 1, on_invalid, listed, path)
    out.lines = newlines + (1 if carry else 0)
    if not out.size or out.size == len(BOM) * out.bom:
        out.starts = []
    errors.extend(listed)
    if on_invalid == "error" and out.bad > MAX_LISTED:
        errors.append(f"{path}: ... and {out.bad - MAX_LISTED} more invalid lines (UTF-8 or NUL)")
    return out


def _check(body: bytes, first: int, on_invalid: str, listed: list[str], path: str) -> int:
    """How many lines of `body` (lines joined by b"\\n", the first numbered `first`) are invalid;
    in error mode the first `MAX_LISTED` of the file are listed with file:line."""
    if b"\0" not in body:
        try:
            body.decode("utf-8")
            return 0
        except UnicodeDecodeError:
            pass
    bad = 0
    for i, line in enumerate(body.split(b"\n"), first):
        why = line_problem(line)
        if why:
            bad += 1
            if on_invalid == "error" and len(listed) < MAX_LISTED:
                listed.append(f"{path}:{i}: {why}")
    return bad
