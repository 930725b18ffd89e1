"""Checkpoint averaging, as fairseq's `scripts/average_checkpoints.py` does it: the mean of the
parameters of K committed checkpoints (summed in float32 in the order given, then divided by K),
written as a new committed tag that `mmtc eval` and `mmtc translate` read like any other.

The new tag's name must not start with "step": discovery (resume, the default checkpoint) only
looks at those, so an average never becomes the point a run resumes from, and LATEST is left
alone.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.checkpoint import commit as ckpt
from pipeline.checkpoint.weights import consolidated_state
from pipeline.config.training import KeepBestConfig
from pipeline.rundir.layout import RunDir


def average_states(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """fairseq's rule: half tensors are summed as float, float tensors divided by K, integer
    ones floor-divided. Every state must have the same keys and shapes."""
    if not states:
        raise ValueError("nothing to average: no checkpoints were selected")
    keys = list(states[0])
    summed: dict[str, torch.Tensor] = {}
    for i, state in enumerate(states):
        if list(state) != keys:
            missing = sorted(set(keys) ^ set(state))
            raise ValueError(f"checkpoint {i} has other parameters than checkpoint 0: {missing[:5]}")
        for k in keys:
            p = state[k].float() if state[k].dtype == torch.float16 else state[k]
            if k not in summed:
                summed[k] = p.detach().clone()
            elif p.shape != summed[k].shape:
                raise ValueError(f"{k}: shape {tuple(p.shape)} in checkpoint {i}, {tuple(summed[k].shape)} in 0")
            else:
                summed[k] += p
    for v in summed.values():
        if v.is_floating_point():
            v.div_(len(states))
        else:
            v //= len(states)
    return summed


def committed_tags(root: Path, deep: bool = True) -> list[ckpt.Committed]:
    """The run's committed, intact (checksums read when `deep`) training checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in sorted(q for q in root.iterdir() if q.is_dir() and q.name.startswith("step")):
        meta, _ = ckpt.verify(p, deep=deep)
        if meta is not None:
            found.append(ckpt.Committed(p.name, p, meta))
    return found


@dataclass(frozen=True)
class Selection:
    tags: list[ckpt.Committed]
    how: str
    scores: dict[str, float]  # tag -> the score it was chosen by (best-K only)
    skipped: list[str]  # tags passed over, and why


def select_last(tags: list[ckpt.Committed], k: int) -> Selection:
    if k < 1:
        raise ValueError(f"--last {k}: must be at least 1")
    if len(tags) < k:
        raise ValueError(f"--last {k}: the run has {len(tags)} committed checkpoint(s)")
    return Selection(tags[-k:], f"last {k}", {}, [])


def dev_loss_scores(tags: list[ckpt.Committed], dev_rows: list[dict], directions: list[str],
                    group: str) -> tuple[dict[str, float], list[str]]:
    """Each tag's mean dev loss over `directions`, from the evaluation logged at its step; a tag
    whose step had no evaluation of all of them is skipped (and listed)."""
    at_step = {int(r["step"]): r["dev_loss"] for r in dev_rows if r.get("dev_loss")}  # a later row wins
    scores: dict[str, float] = {}
    skipped = []
    for t in tags:
        dev = at_step.get(t.step)
        if dev is None or any(d not in dev for d in directions):
            skipped.append(f"{t.tag} (no dev evaluation of group {group} at step {t.step})")
            continue
        scores[t.tag] = sum(dev[d] for d in directions) / len(directions)
    return scores, skipped


def dev_bleu_scores(run: RunDir, tags: list[ckpt.Committed], directions: list[str],
                    group: str) -> tuple[dict[str, float], list[str]]:
    """Each tag's mean dev BLEU over `directions`, from its `eval/<tag>/dev.json` (written at a
    stage end, or by `mmtc eval --split dev --checkpoint TAG`); tags without one are skipped."""
    scores: dict[str, float] = {}
    skipped = []
    for t in tags:
        path = run.eval_dir(t.tag) / "dev.json"
        dirs = json.loads(path.read_text())["directions"] if path.is_file() else {}
        if any(d not in dirs for d in directions):
            skipped.append(f"{t.tag} (no dev BLEU of group {group}: run mmtc eval --split dev --checkpoint {t.tag})")
            continue
        scores[t.tag] = sum(dirs[d]["bleu"] for d in directions) / len(directions)
    return scores, skipped


def best_of(scores: dict[str, float], k: int, higher_is_better: bool) -> list[str]:
    sign = -1.0 if higher_is_better else 1.0
    return sorted(scores, key=lambda tag: (sign * scores[tag], tag))[:k]


def best_to_keep(root: Path, dev_rows: list[dict], cfg: KeepBestConfig,
                 directions_of: dict[str, list[str]]) -> set[str]:
    """train.keep_best: for each of its groups, the K committed tags with the lowest mean dev loss."""
    if not cfg.k:
        return set()
    tags = committed_tags(root, deep=False)
    keep: set[str] = set()
    for group in cfg.groups():
        scores, _ = dev_loss_scores(tags, dev_rows, directions_of[group], group)
        keep.update(best_of(scores, cfg.k, higher_is_better=False))
    return keep


def select_best(tags: list[ckpt.Committed], scored: tuple[dict[str, float], list[str]], k: int, by: str,
                group: str) -> Selection:
    """The K tags with the best `scored` (lowest dev loss, or highest dev BLEU)."""
    if k < 1:
        raise ValueError(f"--best {k}: must be at least 1")
    scores, skipped = scored
    if len(scores) < k:
        hint = ("save at evaluation steps (train.save_every a multiple of train.eval_every)" if by == "dev_loss"
                else "score more checkpoints with mmtc eval --split dev --checkpoint TAG")
        raise ValueError(f"--best {k}: only {len(scores)} checkpoint(s) have a {by} (skipped: "
                         f"{', '.join(skipped) or 'none'}); {hint}")
    best = best_of(scores, k, higher_is_better=by == "dev_bleu")
    chosen = [t for t in tags if t.tag in best]  # in step order, as fairseq sums them
    return Selection(chosen, f"best {k} by {by} of {group}", {t: scores[t] for t in best}, skipped)


def group_directions(run: RunDir, group: str) -> list[str]:
    summary = json.loads(run.data_summary.read_text())["directions"]
    # `all`, as everywhere, is the directions with training data (not the eval-only ones)
    names = [n for n, d in summary.items() if (group == "all" and not d.get("eval_only")) or d.get("group") == group]
    if not names:
        groups = sorted({str(d.get("group")) for d in summary.values()})
        raise ValueError(f"--group {group}: no direction of this run is in it (groups: {', '.join(groups)}, or all)")
    return names


def write_average(root: Path, out: str, selection: Selection) -> ckpt.Committed:
    if out.startswith("step") or "/" in out or out.startswith(".") or not out:
        raise ValueError(f"--out {out!r}: a tag name not starting with 'step' (those are the run's own "
                         "checkpoints, which resume reads), without '/'")
    if (root / out).exists():
        raise ValueError(f"{root / out} exists; choose another --out (an average is never overwritten)")
    states = [consolidated_state(t.path, int(t.meta.get("zero_stage", 0))) for t in selection.tags]
    averaged = average_states(states)
    tmp = root / f".{out}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(averaged, tmp / "consolidated.pt")
    tmp.rename(root / out)
    last = selection.tags[-1].meta
    meta = {"step": max(t.step for t in selection.tags), "stage": last.get("stage"), "final": False,
            "zero_stage": 0, "world": 1, "averaged_from": [t.tag for t in selection.tags],
            "selection": selection.how, "scores": selection.scores}
    return ckpt.commit(root, out, meta, point_latest=False)


def average_run(run_dir: str, out: str, last: int | None = None, best: int | None = None,
                group: str = "all", by: str = "dev_loss") -> str:
    """`mmtc average`: select, average, commit; the text printed."""
    run = RunDir(run_dir)
    if not run.exists():
        raise FileNotFoundError(f"{run_dir}: no config.yaml there (not a run directory)")
    tags = committed_tags(run.checkpoints)
    if best is not None:
        directions = group_directions(run, group)
        scored = (dev_bleu_scores(run, tags, directions, group) if by == "dev_bleu"
                  else dev_loss_scores(tags, run.read_jsonl(run.metrics), directions, group))
        selection = select_best(tags, scored, best, by, group)
    else:
        selection = select_last(tags, last if last is not None else 1)
    done = write_average(run.checkpoints, out, selection)
    lines = [f"averaged {len(selection.tags)} checkpoint(s), {selection.how}:"]
    label = "dev BLEU" if by == "dev_bleu" else "dev loss"
    lines += [f"  {t.tag}" + (f"  {label} {selection.scores[t.tag]:.4f}" if t.tag in selection.scores else "")
              for t in selection.tags]
    lines += [f"  skipped {s}" for s in selection.skipped]
    lines.append(f"wrote {done.path} (use --checkpoint {out} with mmtc eval / translate)")
    return "\n".join(lines)
