"""Per-stage reports from a run directory: BLEU, chrF and dev loss of every stage-final checkpoint
on dev and test, with the change against the previous stage, as `reports/stage-<k>-<name>.json`
(schema: report_schema.json) and `.md`, plus `reports/index.html` for the whole run.

Everything is read from disk; only a stage-final checkpoint whose dev or test evaluation is missing
(or was overwritten by a partial `mmtc eval --max-sentences`) is decoded again. References are
copied to `reports/references/` so that `mmtc compare` can run significance tests without the corpus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import RecipeConfig
from pipeline.core.atomic import atomic_write_text
from pipeline.core.hostinfo import version
from pipeline.core.typed_yaml import to_plain
from pipeline.data.prepare import open_recorded
from pipeline.evaluation.evaluate import averages
from pipeline.evaluation.metrics import ALL as METRICS
from pipeline.evaluation.run_eval import evaluate_run
from pipeline.report.html import stage_markdown, write_index
from pipeline.report.rundata import RunData, Stage, load_run_data, read_lines, sha256, stage_stem  # noqa: F401  (re-exported)
from pipeline.rundir.layout import RunDir

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("report_schema.json")
SPLITS = ("dev", "test")


class CorpusSource:
    """Loads the prepared corpus (a cache hit once the run has trained) the first time it is needed."""

    def __init__(self, data: RunData, corpus: Any = None, log: Callable[[str], None] | None = None) -> None:
        self.data, self.corpus, self.log = data, corpus, log or (lambda _m: None)

    def get(self) -> Any:
        if self.corpus is None:
            run = self.data.run
            self.corpus = open_recorded(self.data.recipe, run.tokenizer, run.corpus_record, self.log)
        return self.corpus


def expected_sentences(data: RunData, split: str) -> dict[str, int]:
    """Sentences per direction a complete evaluation of `split` scores (eval.max_sentences applied)."""
    cap = data.recipe.eval.max_sentences
    out = {}
    for name, d in data.summary.get("directions", {}).items():
        pairs = (d.get(split) or {}).get("pairs", 0)
        if pairs:
            out[name] = pairs if cap is None else min(pairs, cap)
    return out


def _complete_eval(run: RunDir, tag: str, split: str, expected: dict[str, int]) -> dict[str, Any] | None:
    path = run.eval_dir(tag) / f"{split}.json"
    if not path.is_file():
        return None
    ev = json.loads(path.read_text())
    dirs = ev.get("directions", {})
    if set(dirs) != set(expected):
        return None
    for name, n in expected.items():
        hyp = run.eval_dir(tag) / split / f"{name}.hyp"
        if dirs[name].get("sentences") != n or not hyp.is_file() or len(read_lines(hyp)) != n:
            return None
    return ev


def _references(data: RunData, split: str, expected: dict[str, int], source: CorpusSource) -> dict[str, Path]:
    root = data.run.path / "reports" / "references" / split
    paths = {n: root / f"{n}.ref" for n in expected}
    have = all(p.is_file() and len(read_lines(p)) == expected[n] for n, p in paths.items())
    if not have or source.corpus is not None:  # a loaded corpus is the source of truth: refresh
        splits = source.get().splits[split]
        root.mkdir(parents=True, exist_ok=True)
        for n, p in paths.items():
            p.write_bytes("".join(r + "\n" for r in splits[n].texts["tgt"][: expected[n]]).encode("utf-8"))
    return paths


def _delta(now: dict[str, Any], before: dict[str, Any] | None, keys: dict[str, int]) -> dict[str, float] | None:
    if before is None:
        return None
    return {k: round(now[k] - before[k], nd) for k, nd in keys.items() if k in now and k in before}


def _split_section(data: RunData, tag: str, split: str, ev: dict[str, Any], refs: dict[str, Path],
                   prev: dict[str, Any] | None) -> dict[str, Any]:
    groups = data.groups
    dirs: dict[str, Any] = {}
    for name, e in ev["directions"].items():
        hyp = data.run.eval_dir(tag) / split / f"{name}.hyp"
        before = (prev or {}).get("directions", {}).get(name)
        scores = {k: e[k] for m in METRICS for k in (m.key, f"{m.key}_signature") if m.key in e}
        if "off_target_ref" in e:  # beside the rate: the identifier's own error on these references
            scores["off_target_ref"] = e["off_target_ref"]
        dirs[name] = {
            "group": groups.get(name), "sentences": e["sentences"], "of": e.get("of"), **scores,
            "loss": e["loss"], "copy_source": e.get("copy_source"),
            "hypotheses": str(hyp.relative_to(data.run.path)), "hypotheses_sha256": sha256(hyp),
            "references": str(refs[name].relative_to(data.run.path)), "references_sha256": sha256(refs[name]),
            "delta": _delta(e, before, {**{m.key: 2 for m in METRICS}, "loss": 4}),
        }
    eval_only = [n for n, d in data.summary.get("directions", {}).items() if d.get("eval_only")]
    avgs = averages(dirs, groups, eval_only)
    for k, a in avgs.items():
        a["delta"] = _delta(a, (prev or {}).get("averages", {}).get(k), {m.key: 2 for m in METRICS})
    present = [m.key for m in METRICS if all(m.key in d for d in dirs.values())]
    sigs = {m: sorted({d[f"{m}_signature"] for d in dirs.values()}) for m in present}
    # BLEU's tokenizer may follow the target language; anything else differing is a mixed evaluation.
    mixed = {m: s for m, s in sigs.items() if len({re.sub(r"\|tok:[^|]*", "", x) for x in s}) != 1}
    if mixed:
        raise ValueError(f"{data.run.path}: {split} of {tag} was scored with mixed sacrebleu signatures: {mixed}")
    return {"checkpoint": tag, "signatures": {m: "; ".join(s) for m, s in sigs.items()}, "directions": dirs,
            "averages": avgs, "eval_seconds": ev.get("seconds")}


def _training(data: RunData, st: Stage) -> dict[str, Any]:
    """Steps, tokens, wall time and throughput of the stage, from its log lines (Σ step_s × steps;
    runs logged before a field existed count it as 0)."""
    end = st.end_step if st.end_step is not None else st.start_step
    before = [r for r in data.train_rows if r["step"] <= st.start_step]
    rows = [r for r in data.train_rows if st.start_step < r["step"] <= end]
    wall, last = 0.0, st.start_step
    for r in rows:
        wall += r.get("step_s", 0.0) * (r["step"] - last)
        last = r["step"]

    def gained(key: str) -> int:
        return int(rows[-1].get(key, 0) - (before[-1].get(key, 0) if before else 0)) if rows else 0

    tokens, skipped = gained("tokens"), gained("skipped_steps")
    return {"steps": end - st.start_step, "tokens": tokens, "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None, "skipped_steps": skipped,
            "final_lr": rows[-1]["lr"] if rows else None, "final_train_loss": rows[-1]["loss"] if rows else None}


def _distillation(data: RunData, st: Stage) -> dict[str, Any] | None:
    """LSSD's teachers at the stage's end, per direction: the evaluation its teacher comes from, how
    many times it changed in the stage, and for how many steps before the end it had stopped
    changing (a direction whose teacher froze early had converged; Huang et al.'s picture)."""
    cfg = data.recipe.stage_distill(data.recipe.resolved_stages()[st.index])
    if cfg.method == "none":
        return None
    end = st.end_step if st.end_step is not None else st.start_step
    updates = [e for e in data.events if e.get("event") == "teacher_update" and e["step"] <= end]
    dirs: dict[str, Any] = {}
    for name in st.directions:
        mine = [e for e in updates if name in e["directions"]]
        last = mine[-1] if mine else None
        dirs[name] = {"teacher_step": last["step"] if last else None,
                      "best_dev_loss": last["dev_loss"][name] if last else None,
                      "updates_in_stage": sum(1 for e in mine if e["step"] > st.start_step),
                      "frozen_for_steps": end - last["step"] if last else None}
    return {"method": cfg.method, "gate": cfg.gate, "level": cfg.level, "weight": cfg.weight, "when": cfg.when,
            "directions": dirs}


def stage_report(data: RunData, st: Stage, source: CorpusSource, prev: dict[str, Any] | None = None,
                 reevaluate: bool = False, device: Any = None) -> dict[str, Any]:
    """The stage's report, evaluating its final checkpoint on dev and test where that is missing."""
    if st.tag is None:
        raise ValueError(f"stage {st.name} has no committed stage-final checkpoint yet")
    splits = {}
    for split in SPLITS:
        expected = expected_sentences(data, split)
        if not expected:
            continue  # the corpus has no such split (test is optional in a manifest)
        ev = None if reevaluate else _complete_eval(data.run, st.tag, split, expected)
        if ev is None:
            import torch

            dev = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
            ev = evaluate_run(data.run, source.get(), data.recipe, split=split, tag=st.tag, device=dev)
        refs = _references(data, split, expected, source)
        splits[split] = _split_section(data, st.tag, split, ev, refs, (prev or {}).get("splits", {}).get(split))
    final = data.finals.get(st.index, {})
    return {
        "schema_version": SCHEMA_VERSION,
        "run": {"name": data.recipe.name, "path": str(data.run.path.resolve()), "world": final.get("world"),
                "zero_stage": final.get("zero_stage"), "precision": data.recipe.train.precision},
        "stage": {"index": st.index, "name": st.name, "checkpoint": st.tag, "start_step": st.start_step,
                  "end_step": st.end_step, "directions": st.directions, "end": st.end},
        "previous_stage": None if prev is None else {k: prev["stage"][k] for k in ("index", "name", "checkpoint")},
        "eval_config": {k: v for k, v in to_plain(data.recipe.eval).items() if k not in ("splits", "stage_end")},
        "training": _training(data, st),
        "distillation": _distillation(data, st),
        "splits": splits,
        "versions": {"mmtc": version("mmt-curriculum"), "sacrebleu": version("sacrebleu")},
    }


def write_stage_files(run: RunDir, report: dict[str, Any]) -> Path:
    out = run.path / "reports"
    out.mkdir(parents=True, exist_ok=True)
    stem = stage_stem(report["stage"]["index"], report["stage"]["name"])
    path = out / f"{stem}.json"
    atomic_write_text(path, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(out / f"{stem}.md", stage_markdown(report))
    return path


def saved_reports(data: RunData) -> list[dict[str, Any]]:
    """Reports on disk that belong to the run's current stage-final checkpoints (a report left by
    an attempt that `resume --from-stage` set aside names another checkpoint and is skipped)."""
    out = []
    for st in data.stages:
        path = data.run.path / "reports" / f"{stage_stem(st.index, st.name)}.json"
        if st.tag and path.is_file():
            rep = json.loads(path.read_text())
            if rep["stage"]["checkpoint"] == st.tag:
                out.append(rep)
    return out


def validate(report: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when `report` does not match report_schema.json."""
    import jsonschema

    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))


def write_stage_report(run: RunDir, corpus: Any, recipe: RecipeConfig, stage_index: int, tag: str,
                       device: Any) -> Path:
    """For the trainer at a stage end (rank 0): evaluate test (dev is already scored), write the
    stage's JSON and Markdown and refresh index.html. Returns the JSON's path."""
    data = load_run_data(run)
    data.recipe = recipe
    st = data.stages[stage_index]
    if st.tag != tag:
        raise ValueError(f"stage {st.name}: its committed final checkpoint is {st.tag}, not {tag}")
    prev = next((r for r in saved_reports(data) if r["stage"]["index"] == stage_index - 1), None)
    path = write_stage_files(run, stage_report(data, st, CorpusSource(data, corpus), prev, device=device))
    write_index(data, saved_reports(data), figures=recipe.eval.figures)
    return path


def build_report(run_dir: str | Path, reevaluate: bool = False, device: Any = None,
                 log: Callable[[str], None] | None = None) -> Path:
    """`mmtc report`: every finished stage's JSON and Markdown, then index.html. Returns its path."""
    run = RunDir(run_dir)
    data = load_run_data(run)
    source = CorpusSource(data, log=log)
    reports: list[dict[str, Any]] = []
    prev = None
    for st in data.stages:
        if st.tag is None:
            continue
        prev = stage_report(data, st, source, prev, reevaluate, device)
        write_stage_files(run, prev)
        reports.append(prev)
    keep = {stage_stem(r["stage"]["index"], r["stage"]["name"]) for r in reports}
    for old in (run.path / "reports").glob("stage-*.*"):
        if re.fullmatch(r"stage-\d+-.+\.(json|md)", old.name) and old.name.rsplit(".", 1)[0] not in keep:
            old.unlink()  # a stage of an earlier attempt, not of this run any more
    return write_index(data, reports)
