"""The training loop: stages of steps over a DeepSpeed engine, read top to bottom.

Each step draws this rank's micro-batches from the stage's batch stream, computes the per-token
loss, sums it per direction (scatter-add), normalises by the step's global target-token count and
lets DeepSpeed reduce and apply the gradients (`step.py`, or the surgery step). Every `eval_every`
steps the dev loss per direction feeds the stage's monitors; when the stage's `until:` is met, the
run records why, saves a stage-final checkpoint, calls the stage-end hooks (the worker registers
evaluation and the report there) and starts the next stage from there. What a stage runs is built
by `stage_setup.open_stage`; the trainer does not know which sampler or monitor it runs.

About 300 lines, one job: the loop (fit, observe, log, end_stage, preempt) and the trainer's own
state (state_dict / load_state_dict); stage setup, the step and the metrics row are beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from pipeline.checkpoint.checkpointer import Checkpointer
from pipeline.checkpoint.weights import ReferenceModel
from pipeline.config import RecipeConfig
from pipeline.core import faults, preemption
from pipeline.curriculum.counters import Counters
from pipeline.curriculum.monitors import Observation
from pipeline.curriculum.stage import Ending
from pipeline.data.batches import StepBatches
from pipeline.data.prepare import PreparedCorpus
from pipeline.distill.lssd import ROWS
from pipeline.distill.teachers import TeacherBank
from pipeline.engine.collectives import Dist, all_reduce_sum, broadcast_object
from pipeline.engine.ds_engine import Engine
from pipeline.model.transformer import build_model
from pipeline.rundir.layout import RunDir
from pipeline.train.devloss import DevLoss
from pipeline.train.metrics import LossSums, log_row
from pipeline.train.progress import Progress
from pipeline.train.stage_setup import StageRuntime, open_stage
from pipeline.train.step import gather_held, gather_memory, per_direction, plain_step, token_scales
from pipeline.train.tensorboard import TensorBoardLog


class TrainingStopped(RuntimeError):
    """The run saved and stopped on purpose (too many bad steps); the message says why."""


class Trainer:
    def __init__(self, recipe: RecipeConfig, run: RunDir, dist: Dist, corpus: PreparedCorpus) -> None:
        self.recipe, self.run, self.dist, self.corpus = recipe, run, dist, corpus
        self.names = corpus.manifest.names
        self.stages = recipe.resolved_stages()
        torch.manual_seed(recipe.seed + 1000 * dist.rank)
        model = build_model(recipe, corpus.tokenizer.vocab_size, corpus.tokenizer.pad_id)
        self.engine = Engine(model, recipe, dist, recipe.train.max_steps)
        self.counters = Counters()
        self.current: StageRuntime | None = None  # the open stage; None between stages
        self.reference: ReferenceModel | None = None  # DoReMi's frozen reference model, kept across stages
        self.dev = DevLoss(corpus, dist)
        self.teachers: TeacherBank | None = None  # LSSD's per-direction teachers, kept across stages
        if recipe.uses_lssd():
            cfg = next(recipe.stage_distill(s) for s in self.stages if recipe.stage_distill(s).method == "lssd")
            runner = build_model(recipe, corpus.tokenizer.vocab_size, corpus.tokenizer.pad_id)
            self.teachers = TeacherBank(self.names, runner, cfg, dist.device)
        self.sums = LossSums(len(self.names))
        self._probe_s = 0.0  # seconds in the gradient probe since the last log row
        self._held: dict[str, int] | None = None  # Engine.held_bytes before a log step's optimizer step
        self.meter = Progress(recipe.train.max_steps, dist.is_main)
        self.tb: TensorBoardLog | None = None  # rank 0 only; set by the worker once restored
        self.stop_requested = False
        self.final_unsaved: str | None = None  # the run's last checkpoint, when its save failed
        # Called on every rank with (stage-final tag, stage index) when eval.stage_end: the worker
        # registers the stage's evaluation and report (pipeline/report/stage_end.py).
        self.on_stage_end: list[Callable[[str, int], None]] = []
        self.ckpt = Checkpointer(self)

    @property
    def stage_ids(self) -> np.ndarray:
        """The open stage's directions as indices into `names` (all of them between stages)."""
        return self.current.stage_ids if self.current is not None else np.arange(len(self.names))

    def _open(self) -> StageRuntime:
        assert self.current is not None
        return self.current

    # -- stages ------------------------------------------------------------------------------
    def open_stage(self, index: int, fresh: bool) -> None:
        """Build the stage's runtime; `fresh` applies its transitions (optimizer and LR resets)."""
        self.current = open_stage(self, self.stages, index, self.reference)
        self.reference = self.current.reference
        if not fresh:
            return
        stage, progress = self.stages[index], self.current.progress
        start = self.counters.step - self.counters.stage_step
        if index > 0 and stage.optimizer == "reset":
            self.engine.reset_optimizer_state()
        if index > 0 and stage.lr_schedule == "reset":
            self.engine.schedule.restart(self.counters.step, progress.limit() - start, stage.warmup_steps)
        self.event("stage_start", stage=stage.name, directions=self.current.names, optimizer=stage.optimizer,
                   lr_schedule=stage.lr_schedule, lr=self.engine.lr())

    def event(self, kind: str, **fields: Any) -> None:
        if self.dist.is_main:
            self.run.append(self.run.events, {"step": self.counters.step, "event": kind, **fields})

    # -- one step ----------------------------------------------------------------------------
    def train_step(self, sb: StepBatches) -> bool:
        """One optimizer step; False when it was skipped (non-finite loss or gradient somewhere)."""
        st = self._open()
        scales = token_scales(self, st, sb).to(self.dist.device)
        # the step's sums per direction (rows: distill.lssd.ROWS)
        step_acc = torch.zeros(ROWS, len(self.names), dtype=torch.float64)
        faults.signal_if(self.counters.step + 1, self.dist.rank, self.dist.world)
        every = self.recipe.train.grad_similarity_every
        diagnose = bool(every) and (self.counters.step + 1) % every == 0
        # What each rank holds is measured on log steps only, where this step's gradients exist.
        self._held = None
        measure = self._measure_held if (self.counters.step + 1) % self.recipe.train.log_every == 0 else None
        if st.task_step is not None and (st.task_step.cfg.method != "none" or diagnose):
            stats, cosines = st.task_step.run(sb, scales, step_acc)
            if not bool(torch.isfinite(stats.sum())):
                self.engine.skip_next_step()
            self.engine.set_boundary(True)
            if measure is not None:
                measure()
            self.engine.step()
            if diagnose and self.dist.is_main:
                self.run.append(self.run.metrics, {"step": self.counters.step + 1, "grad_cosine": asdict(cosines)})
        else:
            stats = plain_step(self, st, sb, scales, step_acc, before_step=measure)
        return self._after_step(st, sb, step_acc, stats)

    def _measure_held(self) -> None:
        self._held = self.engine.held_bytes()

    def reduce_stats(self, step_acc: torch.Tensor) -> torch.Tensor:
        """The step's [label-smoothed loss, nll, tokens, excess] per direction summed over ranks, flat;
        a non-finite loss anywhere makes `stats.sum()` non-finite."""
        stop = torch.tensor([1.0 if preemption.requested() else 0.0], dtype=step_acc.dtype)
        stats = all_reduce_sum(torch.cat([*step_acc, stop]))
        self.stop_requested = bool(stats[-1] > 0)
        return stats[:-1]

    def _after_step(self, st: StageRuntime, sb: StepBatches, step_acc: torch.Tensor, stats: torch.Tensor) -> bool:
        applied = self.engine.last_step_applied()
        self.counters.step += 1
        self.counters.stage_step += 1
        self.counters.tokens += sb.global_tgt_tokens
        st.progress.tokens += sb.global_tgt_tokens
        if applied:
            self.sums.add(step_acc)
            self.counters.bad_in_a_row = 0
            pd = per_direction(stats, len(self.names), st.stage_ids)
            # Each policy reads the loss its paper uses: the DRO family the label-smoothed one.
            summed, tok = pd[0 if st.policy.train_loss == "smoothed" else 1], pd[2]
            with np.errstate(invalid="ignore", divide="ignore"):
                st.policy.observe_train(self.counters.stage_step, np.where(tok > 0, summed / tok, np.nan), tok)
            if st.probe is not None and self.counters.stage_step % st.policy.every == 0:
                self.align(st)
        else:
            self.counters.skipped_steps += 1
            self.counters.bad_in_a_row += 1
            self.event("skipped_step", reason="non-finite loss or gradient norm", skipped=self.counters.skipped_steps)
        return applied

    def align(self, st: StageRuntime) -> None:
        """Per-direction gradient statistics for a policy that learns from them."""
        assert st.probe is not None
        start = time.perf_counter()
        info = st.probe.for_policy(st.policy, self.counters.stage_step, st.names)
        st.policy.observe_alignment(self.counters.stage_step, info)
        self._probe_s += time.perf_counter() - start

    # -- logging -----------------------------------------------------------------------------
    def log(self) -> None:
        acc = all_reduce_sum(self.sums.take_log())
        memory = gather_memory(self.dist)
        held = gather_held(self.dist, self._held)
        probe_s, self._probe_s = self._probe_s, 0.0
        if not self.dist.is_main:
            return
        st = self._open()
        elapsed, steps = self.meter.lap(self.counters.step)
        record = log_row(step=self.counters.step, stage_step=self.counters.stage_step, tokens_total=self.counters.tokens,
                         skipped=self.counters.skipped_steps, names=self.names, stage=st, acc=acc, memory=memory,
                         held=held, dist=self.dist, lr=self.engine.lr(), grad_norm=self.engine.grad_norm(), elapsed=elapsed,
                         steps=steps, probe_s=probe_s if st.probe is not None else None,
                         teacher_steps=self.teachers.teacher_step if self.teachers is not None else None)
        self.run.append(self.run.metrics, record)
        if self.tb is not None:
            self.tb.scalars(self.counters.step, record)
        self.meter.show(record)

    def observe(self, seconds: float) -> Ending | None:
        """Dev loss at evaluation steps, then the stage's monitors; identical on every rank."""
        t, st = self.recipe.train, self._open()
        st.progress.seconds += seconds
        dev = train = None
        if t.eval_every and self.counters.step % t.eval_every == 0:
            self.engine.train(False)
            dev = self.dev.losses(self.engine)
            self.engine.train(True)
            acc = all_reduce_sum(self.sums.take_eval())
            train = {n: float(acc[1, i] / acc[2, i]) for i, n in enumerate(self.names) if acc[2, i] > 0}
            st.policy.observe_dev(self.counters.stage_step, np.array([dev[self.names[i]] for i in st.stage_ids]))
            if st.distill.method == "lssd" and self.teachers is not None:
                update = self.teachers.observe(self.counters.step, dev, st.names, self.engine)
                if update is not None:
                    self.event("teacher_update", stage=st.progress.stage.name, directions=update.directions,
                               dev_loss=update.best, snapshots=update.snapshots, snapshot_mb=round(update.bytes / 2**20, 2))
        obs = Observation(self.counters.step, self.counters.stage_step, st.progress.tokens,
                          st.progress.seconds, dev, train)
        ending = st.progress.observe(obs)
        if dev is not None and self.dist.is_main:
            # After the monitors have seen this evaluation: the values logged are the ones they decided on.
            self.run.append(self.run.metrics, {"step": self.counters.step, "stage": st.progress.stage.name,
                                               "dev_loss": dev, "train_nll": train, "monitors": st.progress.values()})
            if self.tb is not None:
                self.tb.scalars(self.counters.step, {"dev_loss": dev, "train_nll": train})
        # Wall-clock budgets can disagree across ranks by a step: rank 0 decides for all.
        flag = torch.tensor([1.0 if ending is not None else 0.0]) if self.dist.is_main else torch.zeros(1)
        if bool(all_reduce_sum(flag) > 0) and ending is None:
            ending = Ending("monitor", "budget", {"decided_by": "rank 0"})
        return ending

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, until_stage: str | None = None) -> bool:
        """Train to the end of the run, or only to the end of stage `until_stage` (one Slurm job
        per stage). True when the whole run is finished."""
        t = self.recipe.train
        self.meter.start(self.counters.step)
        while not self.counters.finished:
            index = self.counters.stage
            if self.current is None:
                self.open_stage(index, fresh=True)
                # The previous stage's end (checkpoint, decoding, report) is not this stage's training time.
                self.meter.start(self.counters.step)
            stream = self._open().stream
            self.engine.train(True)
            ending = None
            while ending is None:
                t0 = time.time()
                self.train_step(stream.step_batches(self.counters.stage_step))
                self.meter.tick(time.time() - t0)
                if self.counters.step % t.log_every == 0:
                    self.log()
                ending = self.observe(time.time() - t0)
                if self.counters.bad_in_a_row >= t.max_bad_steps:
                    self.ckpt.save(final=False)
                    raise TrainingStopped(
                        f"{self.counters.bad_in_a_row} steps in a row had a non-finite loss or gradient "
                        f"(at step {self.counters.step}); saved and stopped. Lower train.lr or check the data.")
                if ending is None and t.save_every and self.counters.step % t.save_every == 0:
                    self.ckpt.save(final=False)
                faults.kill_if("kill", self.counters.step)
                if self.stop_requested and ending is None:
                    self.preempt()
            if self.counters.step % t.log_every:
                self.log()
            self.end_stage(index, ending)
            if until_stage is not None and self.stages[index].name == until_stage:
                break
        return self.counters.finished

    def preempt(self) -> None:
        """Every rank reached this step knowing some rank was signalled: save, then stop."""
        committed = self.ckpt.save(final=False)
        self.event("preempted", signal=preemption.signal_name() or "on another rank",
                   checkpoint=None if committed is None else committed.tag)
        if self.dist.is_main:
            step = self.counters.step
            saved = (f"saved at step {step} ({committed.tag})" if committed is not None
                     else f"stopped at step {step}, but the save FAILED (see above)")
            why = "interrupted (Ctrl-C)" if preemption.signal_name() == "SIGINT" else "preempted"
            print(f"{why}: {saved}; `mmtc resume {self.run.path}` continues; exiting with code "
                  f"{preemption.EXIT_PREEMPTED}", flush=True)
        raise preemption.Preempted(f"stopped at step {self.counters.step}")

    def end_stage(self, index: int, ending: Ending) -> None:
        progress = self._open().progress
        self.event("stage_end", stage=self.stages[index].name, reason=ending.reason, monitor=ending.monitor,
                   values=ending.values, stage_step=self.counters.stage_step, monitors=progress.values())
        last = index + 1 >= len(self.stages) or self.counters.step >= self.recipe.train.max_steps
        if last:
            self.counters.finished = True
        else:
            # The stage-final checkpoint is named after the stage that ended, but its counters
            # already point at the next stage, so resuming from it starts there.
            self.counters.stage, self.counters.stage_step = index + 1, 0
        self.current = None
        committed = self.ckpt.save(final=True, stage_index=index)
        if self.ckpt.last_failed and last:
            self.final_unsaved = f"step {self.counters.step}, stage {self.stages[index].name}"
        if committed is not None and self.dist.is_main:
            print(f"stage {self.stages[index].name} ended at step {self.counters.step} ({ending.reason}"
                  f"{': ' + ending.monitor if ending.monitor else ''}); checkpoint {committed.path}", flush=True)
        if not self.ckpt.last_failed and self.recipe.eval.stage_end and self.on_stage_end:
            # Every rank runs the hooks (they decode a share each); rank 0 knows the committed tag.
            tag = broadcast_object(committed.tag if committed is not None else None)
            for hook in self.on_stage_end:
                hook(tag, index)
        if last:
            self.meter.close()

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What the run's checkpoint holds of the loop (the engine saves the weights, the optimizer
        and the LR schedule): counters, and the open stage's batch stream, curriculum, policy and
        surgery state (None between stages)."""
        st = self.current
        return {
            "counters": asdict(self.counters),
            "stream": st.stream.state_dict() if st is not None else None,
            "curriculum": st.progress.state_dict() if st is not None else None,
            # Under loss_weight/token_weight the policy is not the stream's sampler: saved on its own.
            "policy": st.policy.state_dict() if st is not None and st.apply != "sample" else None,
            "surgery": st.task_step.state_dict() if st is not None and st.task_step is not None else None,
            "teachers": self.teachers.state_dict() if self.teachers is not None else None,
        }

    def shared_state(self) -> dict[str, Any] | None:
        """What every rank holds alike and is too large for the client state: LSSD's snapshots
        (written once, by rank 0, beside the weights)."""
        return {"teachers": self.teachers.tensors()} if self.teachers is not None else None

    def rank_state_dict(self) -> dict[str, Any]:
        """This rank's own state: its RNG, its loss sums since the last log row and dev evaluation,
        and its shard of the surgery target."""
        st = self.current
        return {"torch": torch.get_rng_state(), "log": self.sums.log, "eval": self.sums.eval,
                "target": None if st is None or st.task_step is None else st.task_step.target}

    def load_state_dict(self, state: dict[str, Any], rank_state: dict[str, Any],
                        shared: dict[str, Any] | None = None) -> None:
        """The inverse of state_dict, rank_state_dict and shared_state: the stage that was open is
        opened again (without its transitions) and its parts take their saved state."""
        self.counters = Counters(**state["counters"])
        if rank_state:
            torch.set_rng_state(rank_state["torch"])
            self.sums.load(rank_state["log"], rank_state["eval"])
        if self.teachers is not None and state.get("teachers") is not None:
            self.teachers.load_state_dict(state["teachers"], (shared or {}).get("teachers", {}))
        if self.counters.finished or state.get("stream") is None:
            return
        self.open_stage(self.counters.stage, fresh=False)
        st = self._open()
        st.stream.load_state_dict(state["stream"])
        st.progress.load_state_dict(state["curriculum"])
        if state.get("policy") is not None:
            st.policy.load_state_dict(state["policy"])
        if state.get("surgery") is not None and st.task_step is not None:
            st.task_step.load_state_dict(state["surgery"], rank_state.get("target"))
