"""The run directory: what lives where, and the rule that an existing run is never overwritten silently."""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import RecipeConfig, recipe_to_plain
from pipeline.core.atomic import atomic_write_text
from pipeline.core.hostinfo import environment
from pipeline.curriculum.recipe import recipe_from_plain

LOCK_NAME = ".lock"  # the writer lock's file (runlock.py), never part of a run's contents


class RunDirError(RuntimeError):
    pass


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # layout
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def tokenizer(self) -> Path:
        return self.path / "tokenizer" / "spm.model"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def data_summary(self) -> Path:
        return self.path / "data_summary.json"

    @property
    def corpus_record(self) -> Path:
        """The prepared corpus's cache keys, written by whoever prepared it for this run."""
        return self.path / "corpus.json"

    @property
    def meta(self) -> Path:
        return self.path / "run.json"

    def eval_dir(self, tag: str) -> Path:
        return self.path / "eval" / tag

    def exists(self) -> bool:
        return self.config.is_file()

    def create(self, recipe: RecipeConfig, *, overwrite: bool, source: str, overrides: list[str]) -> None:
        # Called under the run's lock (runlock.RunLock), which makes this check and the creation atomic.
        if not self.is_empty():
            if not overwrite:
                raise RunDirError(
                    f"{self.path} already exists and holds a run. Nothing was changed. Use --resume to continue "
                    "it, --overwrite to delete it and start again, or --run-dir to choose another directory."
                )
            self.clear()
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_config(recipe)
        meta = {
            "recipe": source,
            "overrides": overrides,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "argv": sys.argv,
            "hardware": environment(),
        }
        self.meta.write_text(json.dumps(meta, indent=1))

    def is_empty(self) -> bool:
        """Nothing in it but the writer's lock file (or it does not exist yet)."""
        return not self.path.exists() or all(p.name == LOCK_NAME for p in self.path.iterdir())

    def clear(self) -> None:
        """Delete everything but the lock file: for --overwrite, and to undo a start that failed
        before training (bad data, say) so that the same command can be run again."""
        for p in self.path.iterdir():
            if p.name != LOCK_NAME:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    def write_config(self, recipe: RecipeConfig) -> None:
        self.config.write_text(yaml.safe_dump(recipe_to_plain(recipe), sort_keys=False, allow_unicode=True))

    def load_config(self) -> RecipeConfig:
        if not self.config.is_file():
            raise RunDirError(f"{self.path} is not a run directory (no config.yaml)")
        return recipe_from_plain(yaml.safe_load(self.config.read_text()))

    def append(self, path: Path, record: dict[str, Any]) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()

    def read_jsonl(self, path: Path) -> list[dict[str, Any]]:
        """The records of a log; a torn last line (a process killed mid-write) is skipped with a
        warning, a torn line anywhere else is an error naming file and line."""
        if not path.is_file():
            return []
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        out = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if i == last:
                    print(f"warning: {path}:{i + 1}: torn last line skipped ({exc.msg})", file=sys.stderr)
                    continue
                raise RunDirError(f"{path}:{i + 1}: not a JSON record ({exc.msg}); only the last line may be "
                                  "torn by a kill") from None
        return out

    def truncate_logs(self, step: int, tag: str | None = None) -> None:
        """Drop what a killed run logged after its last checkpoint; the resumed run logs it again.
        Events are cut right after the checkpoint's own event: what followed at the same step (the
        next stage's start, say) is logged again by the resumed run."""
        run = self
        for path in (run.metrics, run.events):
            rows = run.read_jsonl(path)
            kept = [r for r in rows if r.get("step", 0) <= step] if step else []
            if path == run.events and tag is not None:
                marks = [i for i, r in enumerate(kept) if r.get("event") == "checkpoint" and r.get("tag") == tag]
                if marks:
                    cut = marks[-1] + 1
                    # The stop this checkpoint was saved for is history the resumed run cannot log again.
                    kept = kept[:cut] + [r for r in kept[cut:]
                                         if r.get("event") == "preempted" and r.get("checkpoint") == tag]
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
            # Also when a torn last line was skipped: the next append must not continue it.
            if path.is_file() and path.read_text(encoding="utf-8", errors="replace") != text:
                atomic_write_text(path, text)
