"""The trainer's checkpoints: what goes into one, restoring it (the refusals are `resume.py`'s), and
failed saves."""

from __future__ import annotations

import json
import shutil
from typing import Any

import torch

from pipeline.checkpoint import commit as ckpt
from pipeline.checkpoint.average import best_to_keep
from pipeline.checkpoint.host import CheckpointHost
from pipeline.checkpoint.resume import diff_items, refusal, with_defaults
from pipeline.checkpoint.weights import consolidated_state
from pipeline.core import faults
from pipeline.core.atomic import atomic_write_text
from pipeline.core.typed_yaml import to_plain
from pipeline.engine.collectives import all_reduce_sum, barrier

SHARED = "shared_state.pt"  # what every rank holds alike (LSSD's teachers), written once by rank 0


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
            shared = t.shared_state() if t.dist.is_main else None
            if shared is not None:
                torch.save(shared, root / tag / SHARED)
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
            ckpt.prune(root, t.recipe.train.keep_last, self._best_to_keep())
            t.event("checkpoint", tag=tag, final=final)
        barrier()
        return committed

    def _best_to_keep(self) -> set[str]:
        keep = self.t.recipe.train.keep_best
        if not keep.k:
            return set()
        manifest = self.t.corpus.manifest
        directions_of = {"all": manifest.trained, **manifest.groups()}
        return best_to_keep(self.t.run.checkpoints, self.t.run.read_jsonl(self.t.run.metrics), keep, directions_of)

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
                    atomic_write_text(latest, found.tag + "\n")
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
                t.run.truncate_logs(0)
            return None
        saved = dict(found.meta, recipe=with_defaults(found.meta.get("recipe")))
        refused = refusal(found.path, saved, t.dist.world, t.corpus.fingerprint, t.corpus.parts,
                          to_plain(t.recipe), allow)
        if refused is not None:
            raise refused
        resharded = found.meta.get("world") != t.dist.world and int(found.meta.get("zero_stage", 0)) >= 1
        how: dict[str, Any] = {}
        if resharded:
            cs, how = self._reshard(found)
        else:
            cs = t.engine.load(t.run.checkpoints, found.tag)
            if found.meta.get("world") != t.dist.world and t.dist.is_main:
                print(f"resume: {found.meta.get('world')} -> {t.dist.world} processes under ZeRO-0: the checkpoint "
                      "holds the whole optimizer state, so weights, Adam's moments and the schedule carry over as "
                      "saved; the data order follows the new world size", flush=True)
        rank_file, shared = found.path / f"rank_state{t.dist.rank}.pt", found.path / SHARED
        t.load_state_dict(cs, torch.load(rank_file) if rank_file.is_file() else {},
                          torch.load(shared) if shared.is_file() else None)
        if t.dist.is_main:
            t.run.truncate_logs(t.counters.step, found.tag)
            print(f"resume: from {found.tag} (step {t.counters.step})", flush=True)
        t.event("resume", tag=found.tag, **({"resharded_from": found.meta.get("world"), **how} if resharded else {}))
        changes = diff_items(saved["recipe"], to_plain(t.recipe))
        if changes:  # _check_compatible let them through
            self._record_changes(found.tag, changes)
        return found

    def _reshard(self, found: ckpt.Committed) -> tuple[dict[str, Any], dict[str, Any]]:
        """Load a ZeRO checkpoint written by another world size: (client state, the resume event's
        fields saying how). First through DeepSpeed's universal checkpoint (rank 0 converts the tag
        once, to <tag>/universal; every rank then takes its new partition of the fp32 weights and of
        Adam's moments); where that cannot be (`Engine.universal_unsupported`) or fails, the
        consolidated fp32 weights with fresh moments, as before."""
        from pipeline.engine.ds_checkpoint import UNIVERSAL, to_universal  # DeepSpeed only for ZeRO shards

        t, old, stage = self.t, found.meta.get("world"), int(found.meta["zero_stage"])
        why = t.engine.universal_unsupported()
        cs: dict[str, Any] | None = None
        if why is None:
            failed = torch.zeros(1)
            if t.dist.is_main:
                try:
                    to_universal(found.path)
                except Exception as exc:
                    failed += 1
                    why = (str(exc) or type(exc).__name__).splitlines()[0]
            # Doubles as the barrier the other ranks wait at while rank 0 converts.
            if bool(all_reduce_sum(failed) > 0):
                why = why or "the conversion failed on rank 0"
            else:
                try:
                    cs = t.engine.load_universal(found.path / UNIVERSAL)
                except Exception as exc:
                    failed += 1
                    why = f"loading it failed: {type(exc).__name__}: {exc}".splitlines()[0]
                if bool(all_reduce_sum(failed) > 0):
                    why = why or "loading it failed on another rank"
                    cs = None
                    t.engine.reset_optimizer_state()  # whatever part of it did load goes
        if cs is not None:
            if t.dist.is_main:
                print(f"resume: {old} -> {t.dist.world} processes under ZeRO-{stage}: weights, Adam's moments "
                      "and step counts and the schedule carry over (re-split by DeepSpeed's universal checkpoint, "
                      f"{found.tag}/{UNIVERSAL}); the data order follows the new world size", flush=True)
            return cs, {"optimizer_state": "universal"}
        cs = t.engine.load_weights_only(found.path, consolidated_state(found.path, stage))
        if t.dist.is_main:
            print(f"resume: {old} -> {t.dist.world} processes under ZeRO-{stage}: weights and schedule carry over, "
                  f"Adam's moments restart (no universal checkpoint: {why}); the data order follows the new "
                  "world size", flush=True)
        return cs, {"optimizer_state": "restarted", "optimizer_restart_reason": why}

    def _record_changes(self, tag: str, changes: list[tuple[str, Any, Any]]) -> None:
        """An allowed recipe change: an event at the step it takes effect, and a line in run.json."""
        t = self.t
        items = [{"key": k, "old": old, "new": new} for k, old, new in changes]
        t.event("recipe_changed", from_checkpoint=tag, changes=items)
        if not t.dist.is_main:
            return
        print("resume: recipe changed from the checkpoint's (allowed): "
              + "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changes), flush=True)
        meta = json.loads(t.run.meta.read_text()) if t.run.meta.is_file() else {}
        record = {"step": t.counters.step, "from_checkpoint": tag, "changes": items}
        if record not in meta.setdefault("recipe_changes", []):
            meta["recipe_changes"].append(record)
            atomic_write_text(t.run.meta, json.dumps(meta, indent=1))
