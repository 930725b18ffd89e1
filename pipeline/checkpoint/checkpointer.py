"""The trainer's checkpoints: what goes into one, when a resume is refused, and failed saves."""

from __future__ import annotations

import shutil
from typing import Any

import torch

from pipeline.checkpoint import commit as ckpt
from pipeline.checkpoint.host import CheckpointHost
from pipeline.checkpoint.weights import consolidated_state
from pipeline.core import faults
from pipeline.core.typed_yaml import to_plain
from pipeline.engine.collectives import all_reduce_sum, barrier

CHANGES = ("world", "corpus", "recipe")  # what `--allow-change` may let through on resume


class ResumeRefused(RuntimeError):
    pass


def diff_items(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(key path, old, new) wherever two plain config trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(set(a) | set(b)):
            sub = f"{path}.{k}" if path else str(k)
            out += diff_items(a.get(k), b.get(k), sub) if k in a and k in b else [(sub, a.get(k), b.get(k))]
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff_items(x, y, f"{path}[{i}]")]
    return [] if a == b else [(path, a, b)]


def diff_plain(a: Any, b: Any, path: str = "") -> list[str]:
    """Key paths where two plain config trees differ, with both values."""
    return [f"{k}: {old!r} -> {new!r}" for k, old, new in diff_items(a, b, path)]


def corpus_changes(saved: dict[str, dict[str, str]] | None, now: dict[str, dict[str, str]]) -> str:
    """Which direction splits (and files) differ from the checkpoint's, by their fingerprints."""
    if not saved:
        return "files changed (this checkpoint predates per-file fingerprints)"
    out = []
    for key in sorted(set(saved) | set(now)):
        if key not in now:
            out.append(f"{key} is gone (was {saved[key]['files']})")
        elif key not in saved:
            out.append(f"{key} is new ({now[key]['files']})")
        elif saved[key]["fingerprint"] != now[key]["fingerprint"]:
            out.append(f"{key} changed ({now[key]['files']})")
    return "; ".join(out) or "the same files, but their combination differs"


class Checkpointer:
    def __init__(self, trainer: CheckpointHost) -> None:
        self.t = trainer
        self.last_failed = False  # whether the latest save failed (known on every rank)

    def client_state(self) -> dict[str, Any]:
        t = self.t
        return {**t.state_dict(), "world": t.dist.world, "corpus": t.corpus.fingerprint, "recipe": to_plain(t.recipe)}

    def save(self, final: bool, stage_index: int | None = None) -> ckpt.Committed | None:
        """Save and commit; on failure (a full disk, say) report it and keep the last commit in use.
        Returns the Committed record on rank 0 (None on the other ranks, and on every rank when
        the save failed: `last_failed` says which)."""
        self.last_failed = False
        # Each rank also writes rank_state<r>.pt: its RNG and its loss sums since the last log line
        # and dev evaluation (without them the first averages after a resume would cover fewer
        # steps than the uninterrupted run's).
        t = self.t
        index = t.counters.stage if stage_index is None else stage_index
        stage = t.stages[index]
        tag = ckpt.tag_for(t.counters.step, stage.name, final)
        root = t.run.checkpoints
        failed = torch.zeros(1)
        why = ""
        try:
            if faults.armed("save_error", t.counters.step):
                raise OSError(28, "No space left on device (injected)")
            t.engine.save(root, tag, self.client_state())
            faults.kill_if("kill_in_save", t.counters.step)
            torch.save(t.rank_state_dict(), root / tag / f"rank_state{t.dist.rank}.pt")
            state = t.engine.full_state_dict() if final else None
            if state is not None:
                torch.save(state, root / tag / "consolidated.pt")
        # Any failure inside a save is a failed save: on a real full disk torch.save raises
        # RuntimeError ("unexpected pos"), not OSError. Interrupts (BaseException) still propagate.
        except Exception as exc:
            failed += 1
            why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if bool(all_reduce_sum(failed) > 0):
            return self._failed(tag, why or "on another rank")
        barrier()
        committed = None
        if t.dist.is_main:
            meta = {"step": t.counters.step, "stage": stage.name, "stage_index": index, "final": final,
                    "world": t.dist.world, "zero_stage": t.engine.zero_stage, "corpus": t.corpus.fingerprint,
                    "corpus_parts": t.corpus.parts, "recipe": to_plain(t.recipe)}
            try:
                committed = ckpt.commit(root, tag, meta)
            except Exception as exc:  # the commit marker itself may not fit on the disk
                failed += 1
                why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        # Only rank 0 commits: the others learn of a failed commit here.
        if bool(all_reduce_sum(failed) > 0):
            return self._failed(tag, why or "committing on rank 0")
        if t.dist.is_main:
            ckpt.prune(root, t.recipe.train.keep_last)
            t.event("checkpoint", tag=tag, final=final)
        barrier()
        return committed

    def _failed(self, tag: str, why: str) -> None:
        self.last_failed = True
        """A failed save: its partial tag is removed (freeing what it took) before anything else is
        written, and the last committed checkpoint stays the one a resume starts from."""
        t = self.t
        root = t.run.checkpoints
        barrier()
        found = None
        if t.dist.is_main:
            shutil.rmtree(root / tag, ignore_errors=True)
            found, _ = ckpt.discover(root, deep=False)
            latest = root / ckpt.LATEST
            if latest.is_file() and latest.read_text().strip() == tag:
                if found is None:
                    latest.unlink()
                else:
                    ckpt.atomic_write_text(latest, found.tag + "\n")
            keep = found.tag if found else "none"
            print(f"checkpoint: saving {tag} FAILED ({why}); the last committed checkpoint stays in use: {keep}",
                  flush=True)
        t.event("save_failed", tag=tag, error=why, kept=found.tag if found else None)
        barrier()
        return None

    def restore(self, allow: set[str] | frozenset[str] = frozenset()) -> ckpt.Committed | None:
        t = self.t
        found, notes = ckpt.discover(t.run.checkpoints)
        if t.dist.is_main:
            for n in notes:
                print(f"resume: {n}", flush=True)
        if found is None:
            if t.dist.is_main:
                print("resume: no committed checkpoint; starting from the beginning", flush=True)
                self._truncate_logs(0)
            return None
        self._check_compatible(found, allow)
        resharded = found.meta.get("world") != t.dist.world and int(found.meta.get("zero_stage", 0)) >= 1
        if resharded:
            cs = t.engine.load_weights_only(found.path, consolidated_state(found.path, int(found.meta["zero_stage"])))
            if t.dist.is_main:
                print(f"resume: {found.meta.get('world')} -> {t.dist.world} processes under ZeRO-"
                      f"{found.meta['zero_stage']}: weights and schedule carry over, Adam's moments restart "
                      "(ZeRO shards cannot be re-split); the data order follows the new world size", flush=True)
        else:
            cs = t.engine.load(t.run.checkpoints, found.tag)
        rank_file = found.path / f"rank_state{t.dist.rank}.pt"
        t.load_state_dict(cs, torch.load(rank_file) if rank_file.is_file() else {})
        if t.dist.is_main:
            self._truncate_logs(t.counters.step, found.tag)
            print(f"resume: from {found.tag} (step {t.counters.step})", flush=True)
        t.event("resume", tag=found.tag, **({"resharded_from": found.meta.get("world")} if resharded else {}))
        changes = diff_items(found.meta.get("recipe"), to_plain(t.recipe))
        if changes:  # _check_compatible let them through
            self._record_changes(found.tag, changes)
        return found

    def _check_compatible(self, found: ckpt.Committed, allow: set[str] | frozenset[str]) -> None:
        t = self.t
        saved = found.meta
        problems = []
        if saved.get("world") != t.dist.world and "world" not in allow:
            problems.append(f"world size: the checkpoint was written by {saved.get('world')} processes, "
                            f"this run has {t.dist.world}")
        if saved.get("corpus") != t.corpus.fingerprint and "corpus" not in allow:
            problems.append("corpus: the data's fingerprint differs from the checkpoint's: "
                            + corpus_changes(saved.get("corpus_parts"), t.corpus.parts))
        changed = diff_plain(saved.get("recipe"), to_plain(t.recipe))
        if changed and "recipe" not in allow:
            problems.append("recipe: " + "; ".join(changed))
        if problems:
            raise ResumeRefused(
                f"refusing to resume from {found.path}:\n  - " + "\n  - ".join(problems)
                + "\nPass --allow-change " + ",".join(sorted({p.split(':')[0].split()[0] for p in problems}))
                + " to resume anyway.")

    def _record_changes(self, tag: str, changes: list[tuple[str, Any, Any]]) -> None:
        """An allowed recipe change: an event at the step it takes effect, and a line in run.json."""
        t = self.t
        items = [{"key": k, "old": old, "new": new} for k, old, new in changes]
        t.event("recipe_changed", from_checkpoint=tag, changes=items)
        if not t.dist.is_main:
            return
        import json

        print("resume: recipe changed from the checkpoint's (allowed): "
              + "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changes), flush=True)
        meta = json.loads(t.run.meta.read_text()) if t.run.meta.is_file() else {}
        record = {"step": t.counters.step, "from_checkpoint": tag, "changes": items}
        if record not in meta.setdefault("recipe_changes", []):
            meta["recipe_changes"].append(record)
            ckpt.atomic_write_text(t.run.meta, json.dumps(meta, indent=1))

    def _truncate_logs(self, step: int, tag: str | None = None) -> None:
        """Drop what a killed run logged after its last checkpoint; the resumed run logs it again.
        Events are cut right after the checkpoint's own event: what followed at the same step (the
        next stage's start, say) is logged again by the resumed run."""
        import json

        run = self.t.run
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
                ckpt.atomic_write_text(path, text)
