"""`mmtc resume --from-stage NAME`: set the later stages aside as an attempt, and go back."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from pipeline.checkpoint import commit as ckpt
from pipeline.core.atomic import atomic_write_text
from pipeline.rundir.layout import RunDir


def rewind_to_stage(run: RunDir, stage: str) -> tuple[Path, str]:
    """Move everything after the final checkpoint of the stage before `stage` into
    `attempts/<n>-<stage>-<time>/`, point LATEST at that checkpoint, and return (archive, tag)."""
    recipe = run.load_config()
    names = [s.name for s in recipe.resolved_stages()]
    if stage not in names:
        raise ValueError(f"--from-stage {stage}: no such stage (stages: {', '.join(names)})")
    index = names.index(stage)
    if index == 0:
        raise ValueError(f"--from-stage {stage}: it is the first stage; start a new run instead "
                         "(mmtc run --run-dir NEW) so this one is kept")
    root = run.checkpoints
    finals = []
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        meta, _ = ckpt.verify(p, deep=False) if p.is_dir() else (None, "")
        if meta and meta.get("final") and meta.get("stage_index") == index - 1:
            finals.append((p, meta))
    if not finals:
        raise FileNotFoundError(f"no committed final checkpoint of stage {names[index - 1]!r} in {root}")
    base, meta = finals[-1]
    step = int(meta["step"])
    n = len(list((run.path / "attempts").glob("*"))) + 1 if (run.path / "attempts").is_dir() else 1
    archive = run.path / "attempts" / f"{n}-{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    (archive / "checkpoints").mkdir(parents=True)
    for p in sorted(root.iterdir()):
        if p.is_dir() and p.name > base.name:
            shutil.move(str(p), archive / "checkpoints" / p.name)
            ev = run.path / "eval" / p.name
            if ev.is_dir():
                (archive / "eval").mkdir(exist_ok=True)
                shutil.move(str(ev), archive / "eval" / p.name)
    for f in (run.metrics, run.events, run.config):
        if f.is_file():
            shutil.copy2(f, archive / f.name)
    for f in (run.metrics, run.events):
        rows = run.read_jsonl(f)
        kept = [r for r in rows if r.get("step", 0) <= step]
        atomic_write_text(f, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    atomic_write_text(root / ckpt.LATEST, base.name + "\n")
    return archive, base.name
