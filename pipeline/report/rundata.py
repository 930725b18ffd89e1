"""A run directory read back for reports and comparisons: its stages (start, end, stage-final
checkpoint, why it ended), metrics, events and data summary. Reads files only."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.checkpoint import commit as ckpt
from pipeline.config import RecipeConfig
from pipeline.rundir.layout import RunDir


@dataclass
class Stage:
    index: int
    name: str
    tag: str | None  # the stage-final checkpoint; None while the stage runs or before it starts
    start_step: int
    end_step: int | None
    directions: list[str]
    end: dict[str, Any] | None  # reason, monitor, values of its stage_end event
    started: bool = True


@dataclass
class RunData:
    run: RunDir
    recipe: RecipeConfig
    meta: dict[str, Any]
    summary: dict[str, Any]
    events: list[dict[str, Any]]
    train_rows: list[dict[str, Any]] = field(default_factory=list)
    dev_rows: list[dict[str, Any]] = field(default_factory=list)
    sim_rows: list[dict[str, Any]] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)
    finals: dict[int, dict[str, Any]] = field(default_factory=dict)  # stage index -> COMMIT.json

    @property
    def groups(self) -> dict[str, str | None]:
        return {n: d.get("group") for n, d in self.summary.get("directions", {}).items()}

    def boundaries(self) -> list[tuple[str, int, int]]:
        """(name, first step, last step) of every stage that has started, for the plots."""
        last = max([r["step"] for r in self.train_rows] or [0])
        return [(s.name, s.start_step, s.end_step if s.end_step is not None else last)
                for s in self.stages if s.started]


def read_lines(path: Path) -> list[str]:
    """Lines as written (split on \\n only): text-mode reading would turn a \\r inside a
    reference into a line break and shift every later sentence."""
    return path.read_bytes().decode("utf-8").split("\n")[:-1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_run_data(run: RunDir) -> RunData:
    recipe = run.load_config()
    metrics = run.read_jsonl(run.metrics)
    data = RunData(run, recipe, json.loads(run.meta.read_text()) if run.meta.is_file() else {},
                   json.loads(run.data_summary.read_text()) if run.data_summary.is_file() else {},
                   run.read_jsonl(run.events),
                   [r for r in metrics if "loss" in r], [r for r in metrics if "dev_loss" in r],
                   [r for r in metrics if "grad_cosine" in r])
    tags: dict[int, str] = {}
    if run.checkpoints.is_dir():
        for p in sorted(run.checkpoints.iterdir()):  # by step: a redone stage's newest final wins
            meta, _ = ckpt.verify(p, deep=False) if p.is_dir() else (None, "")
            if meta and meta.get("final"):
                tags[int(meta["stage_index"])] = p.name
                data.finals[int(meta["stage_index"])] = meta
    prev_end = 0
    for i, st in enumerate(recipe.resolved_stages()):
        starts = [e for e in data.events if e.get("event") == "stage_start" and e.get("stage") == st.name]
        ends = [e for e in data.events if e.get("event") == "stage_end" and e.get("stage") == st.name]
        end_step = data.finals[i]["step"] if i in data.finals else (ends[-1]["step"] if ends else None)
        end = next((e for e in reversed(ends) if e["step"] == end_step), None)
        seen = [n for r in data.train_rows if r.get("stage") == st.name for n in r.get("p", {})]
        if not run.checkpoints.is_dir() and end_step is not None:
            tags.update(_tag_from_report(run, i, st.name, end_step))
        data.stages.append(Stage(
            i, st.name, tags.get(i), starts[-1]["step"] if starts else prev_end, end_step,
            starts[-1].get("directions") if starts else list(dict.fromkeys(seen)),
            None if end is None else {k: end.get(k) for k in ("reason", "monitor", "values")},
            bool(starts or seen or end_step is not None)))
        prev_end = end_step if end_step is not None else prev_end
    return data


def _tag_from_report(run: RunDir, index: int, name: str, end_step: int) -> dict[int, str]:
    """A run directory copied without its checkpoints (they are the heavy part) still compares:
    the report written at the stage end names the stage-final checkpoint it scored."""
    path = run.path / "reports" / f"{stage_stem(index, name)}.json"
    if not path.is_file():
        return {}
    stage = json.loads(path.read_text())["stage"]
    return {index: stage["checkpoint"]} if stage.get("end_step") == end_step else {}


def stage_stem(index: int, name: str) -> str:
    return f"stage-{index}-{name}"


