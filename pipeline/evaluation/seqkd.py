"""Sequence-level knowledge distillation (Kim & Rush 2016): a teacher run's beam search over the
training sources of chosen directions, written as a new corpus that a student recipe trains on.

`mmtc distill TEACHER_RUN --corpus MANIFEST --out DIR` plans the work once (`DIR/distill.json`:
teacher checkpoint, decoding settings, directions, the sources' fingerprints) as units of
`--unit` source lines; shard s of N decodes units s, s+N, ... and writes each as it finishes
(atomically), so a killed shard resumes where it stopped and the shards can be processes on one
machine (`--nproc`) or the elements of a Slurm job array. When every unit is there, the merge
writes `DIR/<direction>/train.<src>` and `train.<tgt>` (the teacher's translations; with
`--keep-real`, the real pairs too), and `DIR/manifest.yaml`: the distilled directions train on
those files, every other split (dev, test, and the train of directions not distilled) points at
the original sources, untouched. `DIR/provenance.json` records what made the corpus.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from pipeline.checkpoint import commit as ckpt
from pipeline.checkpoint.weights import load_model
from pipeline.config import EvalConfig
from pipeline.core.atomic import atomic_write_text
from pipeline.core.typed_yaml import to_plain
from pipeline.data.chunks import CHUNK, ChunkSource, open_source, read_chunk
from pipeline.data.manifest import DirectionSpec, Manifest, SourceSpec, load_manifest
from pipeline.data.progress import Progress
from pipeline.data.tokenizer import Tokenizer
from pipeline.evaluation.evaluate import translate_ids
from pipeline.rundir.layout import RunDir

PLAN = "distill.json"


@dataclass
class Plan:
    """What a distillation decodes and how; every shard and the merge read the same one."""

    teacher: str  # the teacher run directory (absolute)
    checkpoint: str  # its tag
    corpus: str  # the manifest (absolute)
    directions: list[str]
    keep_real: list[str]
    unit: int  # source lines per unit of work
    eval: dict[str, Any]  # the decoding settings (EvalConfig)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # direction -> {pairs, fingerprint}

    def units(self) -> list[tuple[str, int]]:
        return [(d, k) for d in self.directions for k in range(-(-self.sources[d]["pairs"] // self.unit))]


def _direction_specs(manifest: Manifest, names: list[str]) -> dict[str, DirectionSpec]:
    specs = {d.name: d for d in manifest.directions}
    return {n: specs[n] for n in names}


def make_plan(teacher: str, corpus: str, directions: list[str] | None, keep_real: list[str], unit: int,
              beam: int, checkpoint: str | None) -> Plan:
    if CHUNK % unit:
        raise ValueError(f"--unit {unit} must divide {CHUNK} (the data layer's chunk of pairs)")
    run = RunDir(teacher)
    if not run.exists():
        raise FileNotFoundError(f"{teacher}: not a run directory (no config.yaml)")
    manifest = load_manifest(corpus)
    names = manifest.select(directions or ["all"], trained=True)
    if "all" in keep_real:
        keep_real = list(names)
    unknown = sorted(set(keep_real) - set(names))
    if unknown:
        raise ValueError(f"--keep-real {unknown}: not among the distilled directions {names}")
    recipe = run.load_config()
    tok = Tokenizer(run.tokenizer)
    missing = [n for n in names if manifest.spec(n).tgt not in tok.languages]
    if missing:
        raise ValueError(f"the teacher {teacher} has no target tag for {missing} (its languages: {tok.languages})")
    if checkpoint is None:
        found, notes = ckpt.discover(run.checkpoints)
        if found is None:
            raise FileNotFoundError(f"{run.checkpoints}: no committed checkpoint. {' '.join(notes)}")
        checkpoint = found.tag
    ev = to_plain(recipe.eval)
    ev["beam"] = beam
    plan = Plan(str(Path(teacher).resolve()), checkpoint, str(Path(corpus).resolve()), names, sorted(keep_real),
                unit, ev)
    for n, d in _direction_specs(manifest, names).items():
        src = open_source(d.train, "error", f"{n} train")
        plan.sources[n] = {"pairs": src.pairs, "fingerprint": src.fingerprint}
    return plan


def write_or_check_plan(out: Path, plan: Plan) -> Plan:
    """A new DIR gets the plan; an existing one must hold the same plan (then the work resumes)."""
    path = out / PLAN
    if path.is_file():
        old = json.loads(path.read_text())
        if old != asdict(plan):
            diff = sorted(k for k in old if old.get(k) != asdict(plan).get(k))
            raise ValueError(f"{out} holds a distillation planned differently ({', '.join(diff)} differ): "
                             "use another --out, or the same arguments to resume it")
        return plan
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(asdict(plan), indent=1))
    return plan


def read_plan(out: Path) -> Plan:
    return Plan(**json.loads((out / PLAN).read_text()))


def _unit_path(out: Path, direction: str, k: int) -> Path:
    return out / "work" / direction / f"unit-{k:06d}.json"


def run_shard(out: Path, shard: int, shards: int, device: torch.device, log: Callable[[str], None] = print) -> int:
    """Decode this shard's units that are not done yet; returns how many it decoded."""
    plan = read_plan(out)
    run = RunDir(plan.teacher)
    recipe = run.load_config()
    tok = Tokenizer(run.tokenizer)
    model, _ = load_model(run, recipe, tok.vocab_size, tok.pad_id, plan.checkpoint, device)
    cfg = EvalConfig(**{k: v for k, v in plan.eval.items() if k in EvalConfig.__dataclass_fields__})
    manifest = load_manifest(plan.corpus)
    specs = _direction_specs(manifest, plan.directions)
    mine = [u for i, u in enumerate(plan.units()) if i % shards == shard and not _unit_path(out, *u).is_file()]
    if not mine:
        log(f"distill shard {shard}/{shards}: nothing left to decode")
        return 0
    sources: dict[str, ChunkSource] = {}
    meter = Progress(f"distill shard {shard}/{shards}", sum(_unit_size(plan, u) for u in mine), log, unit="sentences")
    cap = model.max_positions - 2
    cached: tuple[tuple[str, int] | None, Any] = (None, None)
    for direction, k in mine:
        if direction not in sources:
            sources[direction] = open_source(specs[direction].train, "error", f"{direction} train")
            if sources[direction].fingerprint != plan.sources[direction]["fingerprint"]:
                raise ValueError(f"{direction} train changed since the distillation was planned "
                                 f"({plan.corpus}); start again with another --out")
        first = k * plan.unit
        # a chunk holds CHUNK / unit of this shard's units in a row: read it once for all of them
        if cached[0] != (direction, first // CHUNK):
            cached = ((direction, first // CHUNK), read_chunk(sources[direction], first // CHUNK))
        chunk = cached[1]
        lo = first - chunk.first
        src, ref = chunk.src[lo : lo + plan.unit], chunk.tgt[lo : lo + plan.unit]
        kept = [i for i, s in enumerate(src) if s is not None and s.strip()]
        ids = tok.encode([src[i].strip() for i in kept])  # type: ignore[union-attr]
        fits = [j for j, x in enumerate(ids) if len(x) <= cap]
        hyps = tok.decode_batch(translate_ids(model, [ids[j] for j in fits], tok.tag_id(specs[direction].tgt),
                                              tok, cfg, device)) if fits else []
        rows = [kept[j] for j in fits]
        record = {"src": [src[i] for i in rows], "hyp": hyps, "ref": [ref[i] for i in rows],
                  "dropped": {"empty_or_invalid": len(src) - len(kept), "too_long": len(kept) - len(fits)}}
        path = _unit_path(out, direction, k)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, ensure_ascii=False))
        meter.tick(len(src))
    meter.close()
    return len(mine)


def _unit_size(plan: Plan, u: tuple[str, int]) -> int:
    return min(plan.unit, plan.sources[u[0]]["pairs"] - u[1] * plan.unit)


def missing_units(out: Path) -> list[tuple[str, int]]:
    plan = read_plan(out)
    return [u for u in plan.units() if not _unit_path(out, *u).is_file()]


def merge(out: Path, log: Callable[[str], None] = print) -> Path:
    """Write the distilled corpus and its manifest from the finished units."""
    plan = read_plan(out)
    left = missing_units(out)
    if left:
        raise RuntimeError(f"{out}: {len(left)} of {len(plan.units())} units are not decoded yet "
                           f"(first: {left[0][0]} unit {left[0][1]}); run the missing shards (the same command resumes)")
    manifest = load_manifest(plan.corpus)
    counts: dict[str, Any] = {}
    for d in _direction_specs(manifest, plan.directions).values():
        folder = out / d.name
        folder.mkdir(parents=True, exist_ok=True)
        n_units = -(-plan.sources[d.name]["pairs"] // plan.unit)
        src_path, tgt_path = folder / f"train.{d.src}", folder / f"train.{d.tgt}"
        dropped = {"empty_or_invalid": 0, "too_long": 0}
        written = 0
        with open(f"{src_path}.tmp", "w", encoding="utf-8") as fs, open(f"{tgt_path}.tmp", "w", encoding="utf-8") as ft:
            for real in ([False, True] if d.name in plan.keep_real else [False]):
                for k in range(n_units):
                    rec = json.loads(_unit_path(out, d.name, k).read_text())
                    for s, t in zip(rec["src"], rec["ref"] if real else rec["hyp"]):
                        fs.write(_one_line(s) + "\n")
                        ft.write(_one_line(t) + "\n")
                        written += 1
                    if not real:
                        for key in dropped:
                            dropped[key] += rec["dropped"][key]
        os.replace(f"{src_path}.tmp", src_path)
        os.replace(f"{tgt_path}.tmp", tgt_path)
        d.train = SourceSpec(src=str(src_path), tgt=str(tgt_path))
        counts[d.name] = {"source_lines": plan.sources[d.name]["pairs"], "pairs_written": written,
                          "real_pairs_kept": d.name in plan.keep_real, "dropped": dropped}
        log(f"distill: {d.name}: {written} pairs written ({'distilled and real' if d.name in plan.keep_real else 'distilled'}"
            f"; dropped: {dropped['empty_or_invalid']} empty or invalid sources, {dropped['too_long']} too long for the teacher)")
    path = out / "manifest.yaml"
    plain: dict[str, Any] = {"name": f"{manifest.name}-distilled",
                             "directions": [_plain_direction(d) for d in manifest.directions]}
    if manifest.allow_untrained_languages:
        plain["allow_untrained_languages"] = True
    atomic_write_text(path, "# written by mmtc distill: see provenance.json\n" + yaml.safe_dump(plain, sort_keys=False,
                                                                                              allow_unicode=True))
    provenance = {"method": "sequence-level knowledge distillation (Kim & Rush 2016)", "plan": asdict(plan),
                  "directions": counts, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(out / "provenance.json", json.dumps(provenance, indent=1, ensure_ascii=False))
    log(f"distill: corpus written: {path}")
    return path


def _one_line(s: str) -> str:
    # a line of a text corpus cannot hold a newline; a hypothesis never has one, a source record might
    return s.replace("\n", " ")


def _plain_direction(d: DirectionSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"src": d.src, "tgt": d.tgt}
    if d.group is not None:
        out["group"] = d.group
    if d.eval_only:
        out["eval_only"] = True
    for split in ("train", "dev", "test"):
        spec = getattr(d, split)
        if spec is not None:
            default = SourceSpec()
            out[split] = {k: v for k, v in asdict(spec).items() if v != getattr(default, k) or k == "format"}
    return out
