"""A split's content fingerprint, remembered by the stat of its source files, so that opening a
cached corpus reads no text.

The fingerprint of a split is a hash of its files' bytes (`corpus.read_split`); computing it means
reading every byte. After a successful preparation each file-based split (text, tsv, jsonl) records
its fingerprint under a key made of the split's spec and, for each of its files, the resolved path,
size, modification time (ns) and inode, taken before the files were read. The next preparation
whose files have the same stat takes the fingerprint from there. What this trusts: that a file
whose size, mtime and inode are all unchanged holds the same bytes (true unless something
rewrites a file in place to the same size and resets its mtime). A file modified in the last
`RACY_S` seconds is not trusted (as git treats "racily clean" files): the clock the kernel stamps
mtimes with is coarse, so a same-size rewrite within one tick would keep its mtime; such a split is
hashed again until its files are older. `MMTC_REHASH=1` ignores the record and hashes the bytes
again. The `datasets` formats are read every time (their loaders keep
their own caches).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from pipeline.core.atomic import atomic_write_text
from pipeline.data.spec import SourceSpec

VERSION = "1"
RACY_S = 2.0


def source_files(spec: SourceSpec) -> list[Path] | None:
    """The files a split is read from, or None for a `datasets` source."""
    if spec.format == "text" and spec.src and spec.tgt:
        return [Path(spec.src), Path(spec.tgt)]
    if spec.format in ("tsv", "jsonl") and spec.path:
        return [Path(spec.path)]
    return None


def stat_key(spec: SourceSpec) -> str | None:
    """The key a split's fingerprint is remembered under, from its spec and its files' stat; None
    when it cannot be (a `datasets` source, a missing or just-modified file, MMTC_REHASH set)."""
    files = source_files(spec)
    if files is None or os.environ.get("MMTC_REHASH"):
        return None
    h = hashlib.blake2b(digest_size=16)
    recent = time.time_ns() - int(RACY_S * 1e9)
    h.update(f"{VERSION}\0{json.dumps(asdict(spec), sort_keys=True)}\0".encode())
    for f in files:
        try:
            st = f.stat()
        except OSError:
            return None
        if st.st_mtime_ns > recent:
            return None
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0".encode())
    return h.hexdigest()


def _record(root: Path, key: str) -> Path:
    return root / "fingerprints" / f"{key}.json"


def remembered(root: Path, key: str | None) -> str | None:
    if key is None:
        return None
    try:
        return str(json.loads(_record(root, key).read_text())["fingerprint"])
    except (OSError, ValueError, KeyError):
        return None


def remember(root: Path, key: str | None, fingerprint: str, files: str) -> None:
    if key is None or not fingerprint:
        return
    path = _record(root, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"fingerprint": fingerprint, "files": files}) + "\n")
