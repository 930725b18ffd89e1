"""Committed checkpoints: a tag counts only once its COMMIT.json (with checksums) is in place.

DeepSpeed writes the tag directory; then rank 0 writes our commit marker and the LATEST pointer,
each by write-temp-then-rename. Discovery ignores tags without a valid marker or whose files no
longer match their checksums, so a crash during a save leaves the previous checkpoint in use.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_write_text

COMMIT = "COMMIT.json"
LATEST = "LATEST"


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def tag_for(step: int, stage: str, final: bool = False) -> str:
    return f"step{step:08d}-{stage}" + ("-final" if final else "")


@dataclass(frozen=True)
class Committed:
    tag: str
    path: Path
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def commit(root: Path, tag: str, meta: dict[str, Any], point_latest: bool = True) -> Committed:
    """Checksum every file of the tag, then mark it committed and (unless told not to) point
    LATEST at it."""
    path = root / tag
    files = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != COMMIT):
        files[str(f.relative_to(path))] = {"bytes": f.stat().st_size, "blake2b": file_digest(f)}
    record = dict(meta, tag=tag, files=files, committed_at=time.time())
    atomic_write_text(path / COMMIT, json.dumps(record, indent=1))
    if point_latest:
        atomic_write_text(root / LATEST, tag + "\n")
    return Committed(tag, path, record)


def verify(path: Path, deep: bool = True) -> tuple[dict[str, Any] | None, str]:
    """(meta, "") if the tag at `path` is committed and intact, else (None, why not)."""
    marker = path / COMMIT
    if not marker.is_file():
        return None, "no commit marker (the save did not finish)"
    try:
        meta = json.loads(marker.read_text())
    except (json.JSONDecodeError, OSError) as exc:
        return None, f"unreadable commit marker: {exc}"
    for rel, info in meta.get("files", {}).items():
        f = path / rel
        if not f.is_file():
            return None, f"{rel} is missing"
        if f.stat().st_size != info["bytes"]:
            return None, f"{rel} has {f.stat().st_size} bytes, the commit recorded {info['bytes']}"
        if deep and file_digest(f) != info["blake2b"]:
            return None, f"{rel} does not match its checksum"
    return meta, ""


def discover(root: Path, deep: bool = True) -> tuple[Committed | None, list[str]]:
    """The newest committed, intact tag, and a note on every newer tag passed over (and why).

    Tags are named by step, so the newest is the last by name; LATEST is the pointer readers
    outside this module use, and it is checked against what discovery finds.
    """
    notes: list[str] = []
    if not root.is_dir():
        return None, notes
    pointer = root / LATEST
    wanted = pointer.read_text().strip() if pointer.is_file() else None
    candidates = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step")), reverse=True)
    for p in candidates:
        meta, why = verify(p, deep)
        if meta is not None:
            if wanted and wanted < p.name:
                notes.append(f"LATEST names {wanted}, but {p.name} is newer and committed; using it")
            return Committed(p.name, p, meta), notes
        notes.append(f"skipping checkpoint {p.name}: {why}")
    return None, notes


def prune(root: Path, keep_last: int, keep: Collection[str] = ()) -> list[str]:
    """Delete committed tags beyond the newest `keep_last`, never a stage-final one nor one in
    `keep` (train.keep_best's); uncommitted tags older than the newest committed one are debris of
    failed saves and go too."""
    tags = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step")), key=lambda p: p.name)
    committed = [p for p in tags if (p / COMMIT).is_file()]
    removed = []
    newest = committed[-1].name if committed else ""
    for p in committed[:-keep_last] if keep_last else committed:
        meta = json.loads((p / COMMIT).read_text())
        if not meta.get("final") and p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    for p in tags:
        if not (p / COMMIT).is_file() and p.name < newest:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed
