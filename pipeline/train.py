"""The training loop: stages of steps over a DeepSpeed engine, read top to bottom.

Each step draws this rank's micro-batches from the stage's batch stream, computes the per-token
loss, sums it per direction (scatter-add), normalises by the step's global target-token count and
lets DeepSpeed reduce and apply the gradients. Every `eval_every` steps the dev loss per
direction feeds the stage's monitors; when the stage's `until:` is met, the run records why,
saves a stage-final checkpoint, scores BLEU/chrF on dev, and starts the next stage from there.
The trainer does not know which sampler or monitor it runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch

from . import faults, preemption
from .collectives import Dist, all_reduce_sum, peak_memory_mb
from .config import RecipeConfig, SamplingConfig
from .curriculum import Ending, StageProgress
from .data.batches import BatchStream, StepBatches
from .data.prepare import PreparedCorpus
from .devloss import DevLoss
from .engine import Engine
from .loss_weights import direction_scales
from .monitors import Observation
from .progress import Progress
from .rundir import RunDir
from .sampling import Sampler, build_sampler
from .tensorboard import TensorBoardLog
from .trainer_view import Counters
from .typed_yaml import ConfigError
from .weights import ReferenceModel, build_model, clipped_excess


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
        self.stream: BatchStream | None = None
        self.progress: StageProgress | None = None
        self.policy: Sampler = build_sampler(SamplingConfig("uniform"), self.names, [1] * len(self.names))
        self.apply = "sample"
        self.stage_ids = np.arange(len(self.names))
        self.dev = DevLoss(corpus, dist)
        self.reference: ReferenceModel | None = None  # DoReMi's frozen reference model
        # [loss, nll, tokens] per direction: since the last log line, and since the last dev eval
        self._acc = torch.zeros(3, len(self.names), dtype=torch.float64)
        self._acc_eval = torch.zeros(3, len(self.names), dtype=torch.float64)
        self._probe_s = 0.0  # seconds in the gradient probe since the last log row
        self.meter = Progress(recipe.train.max_steps, dist.is_main)
        self.tb: TensorBoardLog | None = None  # rank 0 only; set by the worker once restored
        self.stop_requested = False
        self.final_unsaved: str | None = None  # the run's last checkpoint, when its save failed
        # Called on rank 0 with (stage-final tag, stage index) when eval.stage_end: the worker
        # registers the stage's evaluation and report (pipeline/stage_end.py).
        self.on_stage_end: list[Callable[[str, int], None]] = []
        from .checkpointing import Checkpointer

        self.ckpt = Checkpointer(self)

    # -- stages ------------------------------------------------------------------------------
    def open_stage(self, index: int, fresh: bool) -> None:
        """Build the stage's sampler, batch stream and monitors; `fresh` applies its transitions."""
        stage = self.stages[index]
        names = self.corpus.manifest.select(stage.directions)
        sizes = self.corpus.sizes(names)
        start = self.counters.step - self.counters.stage_step
        self.progress = StageProgress(self.recipe, index, self.corpus.manifest, start)
        cfg = self.recipe.stage_sampling(stage)
        self.policy = build_sampler(cfg, names, sizes, horizon=self.progress.limit() - start)
        self.apply = cfg.apply
        self.reference = self._reference(self.policy, stage.name)
        # Under loss_weight the policy only weighs losses; batches keep their own (static) mix.
        batch_sampler = self.policy if cfg.apply == "sample" else build_sampler(SamplingConfig(cfg.batches), names, sizes)
        specs = {d.name: d for d in self.corpus.manifest.directions}
        t = self.recipe.train
        # A dynamic policy's p takes effect when a chunk is planned: chunks start at its updates.
        period = self.policy.every if self.policy.dynamic and cfg.apply == "sample" else None
        self.stage_ids = np.array([self.names.index(n) for n in names])
        self.task_step = None
        scfg = self.recipe.stage_surgery(stage)
        if scfg.method != "none" or t.grad_similarity_every:
            from .task_step import TaskStep

            if scfg.method == "none" and scfg.tasks == "groups" and not scfg.groups and len(
                    {g for g in self.corpus.manifest.groups() if set(self.corpus.manifest.groups()[g]) & set(names)}) < 2:
                scfg = replace(scfg, tasks="directions")  # diagnostics only: directions when there are no groups
            self.task_step = TaskStep(self, scfg, names)
        self.probe = None
        if self.policy.needs_gradients:
            from .alignment import GradientProbe

            self.probe = GradientProbe(self, getattr(self.policy.params, "probe_tokens", t.max_tokens))
        self.stream = BatchStream(
            [self.corpus.splits["train"][n] for n in names],
            list(self.stage_ids),
            [self.corpus.tokenizer.tag_id(specs[n].tgt) for n in names],
            batch_sampler,
            seed=self.recipe.seed, stage=index, max_tokens=t.max_tokens, chunk_steps=t.chunk_steps,
            world=self.dist.world, rank=self.dist.rank, accum=t.grad_accum, period=period,
        )
        if not fresh:
            return
        if index > 0 and stage.optimizer == "reset":
            self.engine.reset_optimizer_state()
        if index > 0 and stage.lr_schedule == "reset":
            self.engine.schedule.restart(self.counters.step, self.progress.limit() - start, stage.warmup_steps)
        self.event("stage_start", stage=stage.name, directions=names, optimizer=stage.optimizer,
                   lr_schedule=stage.lr_schedule, lr=self.engine.lr())

    def _reference(self, policy: Sampler, stage: str) -> ReferenceModel | None:
        if not policy.wants_reference:
            return None
        if self.recipe.stage_surgery(self.stages[self.counters.stage]).method != "none":
            raise ConfigError([f"stages.{stage}: {policy.kind} scores the plain step's tokens; it does not combine "
                               "with gradient surgery"])
        params = policy.params  # type: ignore[attr-defined]
        return ReferenceModel.reuse_or_load(self.reference, params.reference_run, params.reference_checkpoint,
                                            self.corpus.tokenizer.path, self.dist.device,
                                            {"fp32": torch.float32, "fp16": torch.float16}.get(self.recipe.train.precision, torch.bfloat16))

    def event(self, kind: str, **fields: Any) -> None:
        if self.dist.is_main:
            self.run.append(self.run.events, {"step": self.counters.step, "event": kind, **fields})

    # -- one step ----------------------------------------------------------------------------
    def token_scales(self, sb: StepBatches) -> torch.Tensor:
        """Per-direction factor on summed token losses (see `loss_weights.direction_scales`)."""
        n = self.dist.world * self.recipe.train.grad_accum
        if self.apply == "sample":  # no per-direction weights to ask the policy for
            return torch.full((len(self.names),), n / max(1, sb.global_tgt_tokens), dtype=torch.float32)
        assert self.stream is not None and self.stream.p is not None
        w = np.zeros(len(self.names))
        w[self.stage_ids] = self.policy.probabilities(self.counters.stage_step)
        tokens = np.zeros(len(self.names))
        for d, k in sb.dir_tokens.items():
            tokens[d] = k
        share = np.ones(len(self.names))
        share[self.stream.dir_ids] = self.stream.p
        return torch.tensor(direction_scales(self.apply, n, w, tokens, share), dtype=torch.float32)

    def train_step(self, sb: StepBatches) -> bool:
        """One optimizer step; False when it was skipped (non-finite loss or gradient somewhere)."""
        dev = self.dist.device
        scales = self.token_scales(sb).to(dev)
        # [loss, nll, tokens, clipped excess over the reference] per direction
        step_acc = torch.zeros(4, len(self.names), dtype=torch.float64)
        faults.signal_if(self.counters.step + 1, self.dist.rank, self.dist.world)
        every = self.recipe.train.grad_similarity_every
        diagnose = bool(every) and (self.counters.step + 1) % every == 0
        if self.task_step is not None and (self.task_step.cfg.method != "none" or diagnose):
            stats, info = self.task_step.run(sb, scales, step_acc)
            if not bool(torch.isfinite(stats.sum())):
                self.engine.skip_next_step()
            self.engine.set_boundary(True)
            self.engine.step()
            if diagnose and self.dist.is_main:
                self.run.append(self.run.metrics, {"step": self.counters.step + 1, "grad_cosine": info})
            return self._after_step(sb, step_acc, stats)
        for i, mb in enumerate(sb.micro):
            self.engine.set_boundary(i == len(sb.micro) - 1)
            tgt_out = mb.tgt_out.to(dev)
            loss_tok, nll_tok = self.engine(mb.src.to(dev), mb.tgt_in.to(dev), tgt_out)
            if i == 0 and self.dist.is_main and faults.armed("nan_loss", self.counters.step + 1):
                loss_tok = loss_tok * float("nan")
            seq_loss = loss_tok.sum(1)
            d = mb.direction
            with torch.no_grad():
                step_acc[0].index_add_(0, d, seq_loss.detach().double().cpu())
                step_acc[1].index_add_(0, d, nll_tok.sum(1).detach().double().cpu())
                step_acc[2].index_add_(0, d, (tgt_out != 0).sum(1).double().cpu())
                if self.reference is not None:
                    ref = self.reference.nll(mb.src.to(dev), mb.tgt_in.to(dev), tgt_out)
                    step_acc[3].index_add_(0, d, clipped_excess(nll_tok, ref, tgt_out).double().cpu())
            if i == len(sb.micro) - 1:
                # One all-reduce per step: every rank learns whether any loss was non-finite
                # (then all skip the update), the step's per-direction losses (for policies) and
                # whether any rank was asked to stop (preemption).
                stats = self.reduce_stats(step_acc)
                if not bool(torch.isfinite(stats.sum())):
                    self.engine.skip_next_step()
                elif self.reference is not None:
                    # DoReMi updates its weights from the step's excess before the loss that the
                    # step's gradient comes from (with grad_accum > 1 the earlier micro-batches
                    # used the previous weights, as in the reference code).
                    per_dir = self._per_direction(stats)
                    self.policy.observe_excess(self.counters.stage_step + 1, per_dir[3], per_dir[2])  # type: ignore[attr-defined]
                    scales = self.token_scales(sb).to(dev)
            self.engine.backward((seq_loss * scales[d.to(dev)]).sum())
            self.engine.step()
        return self._after_step(sb, step_acc, stats)

    def reduce_stats(self, step_acc: torch.Tensor) -> torch.Tensor:
        """The step's [label-smoothed loss, nll, tokens, excess] per direction summed over ranks, flat;
        a non-finite loss anywhere makes `stats.sum()` non-finite."""
        stop = torch.tensor([1.0 if preemption.requested() else 0.0], dtype=step_acc.dtype)
        stats = all_reduce_sum(torch.cat([*step_acc, stop]))
        self.stop_requested = bool(stats[-1] > 0)
        return stats[:-1]

    def _per_direction(self, stats: torch.Tensor) -> np.ndarray:
        """[loss, nll, tokens, excess] × the stage's directions, from `reduce_stats`."""
        return stats.reshape(4, len(self.names)).numpy()[:, self.stage_ids]

    def _after_step(self, sb: StepBatches, step_acc: torch.Tensor, stats: torch.Tensor) -> bool:
        applied = self.engine.last_step_applied()
        self.counters.step += 1
        self.counters.stage_step += 1
        self.counters.tokens += sb.global_tgt_tokens
        assert self.progress is not None
        self.progress.tokens += sb.global_tgt_tokens
        if applied:
            self._acc += step_acc[:3]
            self._acc_eval += step_acc[:3]
            self.counters.bad_in_a_row = 0
            per_dir = self._per_direction(stats)
            # Each policy reads the loss its paper uses: the DRO family the label-smoothed one.
            summed, tok = per_dir[0 if self.policy.train_loss == "smoothed" else 1], per_dir[2]
            with np.errstate(invalid="ignore", divide="ignore"):
                self.policy.observe_train(self.counters.stage_step, np.where(tok > 0, summed / tok, np.nan), tok)
            if self.probe is not None and self.counters.stage_step % self.policy.every == 0:
                self.align()
        else:
            self.counters.skipped_steps += 1
            self.counters.bad_in_a_row += 1
            self.event("skipped_step", reason="non-finite loss or gradient norm", skipped=self.counters.skipped_steps)
        return applied

    def align(self) -> None:
        """Per-direction gradient statistics for a policy that learns from them."""
        assert self.probe is not None
        start = time.perf_counter()
        info = self.probe.for_policy(self.policy, self.counters.stage_step, [self.names[i] for i in self.stage_ids])
        self.policy.observe_alignment(self.counters.stage_step, info)
        self._probe_s += time.perf_counter() - start

    # -- logging -----------------------------------------------------------------------------
    def log(self) -> None:
        acc = all_reduce_sum(self._acc.clone())
        self._acc.zero_()
        # Every rank's peak memory, for ZeRO comparisons: each fills its own row of a summed table.
        memory = torch.zeros(self.dist.world, 3, dtype=torch.float64)
        memory[self.dist.rank] = torch.tensor(peak_memory_mb(self.dist.device), dtype=torch.float64)
        memory = all_reduce_sum(memory)
        probe_s, self._probe_s = self._probe_s, 0.0
        if not self.dist.is_main:
            return
        assert self.stream is not None and self.stream.p is not None and self.progress is not None
        tokens = acc[2]
        tot = float(tokens.sum())
        elapsed, steps = self.meter.lap(self.counters.step)
        record = {
            "step": self.counters.step,
            "stage": self.progress.stage.name,
            "lr": self.engine.lr(),
            "loss": float(acc[0].sum()) / max(1.0, tot),
            "nll": float(acc[1].sum()) / max(1.0, tot),
            "grad_norm": self.engine.grad_norm(),
            "tokens_per_s": tot / max(elapsed, 1e-9),
            "step_s": elapsed / max(1, steps),
            **({"probe_s": round(probe_s, 3)} if self.probe is not None else {}),
            "tokens": self.counters.tokens,
            "skipped_steps": self.counters.skipped_steps,
            "peak_host_mb": [round(float(x), 1) for x in memory[:, 0]],
            "host_mb": [round(float(x), 1) for x in memory[:, 2]],
            **({"peak_gpu_mb": [round(float(x), 1) for x in memory[:, 1]]} if self.dist.device.type == "cuda" else {}),
            "directions": {
                n: {"loss": float(acc[0, i] / tokens[i]), "nll": float(acc[1, i] / tokens[i]), "tokens": int(tokens[i])}
                for i, n in enumerate(self.names) if tokens[i] > 0
            },
            "p": {self.names[i]: round(float(x), 6) for i, x in zip(self.stream.dir_ids, self.stream.p)},
        }
        if self.apply != "sample":
            w = self.policy.probabilities(self.counters.stage_step)
            record["loss_weights"] = {self.names[i]: round(float(x), 6) for i, x in zip(self.stage_ids, w)}
        extra = self.policy.log_values()
        if extra:
            record["policy"] = extra
        self.run.append(self.run.metrics, record)
        if self.tb is not None:
            self.tb.scalars(self.counters.step, record)
        self.meter.show(record)

    def observe(self, seconds: float) -> Ending | None:
        """Dev loss at evaluation steps, then the stage's monitors; identical on every rank."""
        t = self.recipe.train
        assert self.progress is not None
        self.progress.seconds += seconds
        dev = train = None
        if t.eval_every and self.counters.step % t.eval_every == 0:
            self.engine.train(False)
            dev = self.dev.losses(self.engine)
            self.engine.train(True)
            acc = all_reduce_sum(self._acc_eval.clone())
            self._acc_eval.zero_()
            train = {n: float(acc[1, i] / acc[2, i]) for i, n in enumerate(self.names) if acc[2, i] > 0}
            self.policy.observe_dev(self.counters.stage_step, np.array([dev[self.names[i]] for i in self.stage_ids]))
        obs = Observation(self.counters.step, self.counters.stage_step, self.progress.tokens,
                          self.progress.seconds, dev, train)
        stage_name = self.progress.stage.name
        ending = self.progress.observe(obs)
        if dev is not None and self.dist.is_main:
            # After the monitors have seen this evaluation: the values logged are the ones they decided on.
            self.run.append(self.run.metrics, {"step": self.counters.step, "stage": stage_name,
                                               "dev_loss": dev, "train_nll": train, "monitors": self.progress.values()})
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
            if self.stream is None:
                self.open_stage(index, fresh=True)
                # The previous stage's end (checkpoint, decoding, report) is not this stage's training time.
                self.meter.start(self.counters.step)
            assert self.stream is not None
            self.engine.train(True)
            ending = None
            while ending is None:
                t0 = time.time()
                self.train_step(self.stream.step_batches(self.counters.stage_step))
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
        assert self.progress is not None
        self.event("stage_end", stage=self.stages[index].name, reason=ending.reason, monitor=ending.monitor,
                   values=ending.values, stage_step=self.counters.stage_step, monitors=self.progress.values())
        last = index + 1 >= len(self.stages) or self.counters.step >= self.recipe.train.max_steps
        if last:
            self.counters.finished = True
        else:
            # The stage-final checkpoint is named after the stage that ended, but its counters
            # already point at the next stage, so resuming from it starts there.
            self.counters.stage, self.counters.stage_step = index + 1, 0
        self.stream = None
        committed = self.ckpt.save(final=True, stage_index=index)
        if self.ckpt.last_failed and last:
            self.final_unsaved = f"step {self.counters.step}, stage {self.stages[index].name}"
        if committed is not None and self.dist.is_main:
            print(f"stage {self.stages[index].name} ended at step {self.counters.step} ({ending.reason}"
                  f"{': ' + ending.monitor if ending.monitor else ''}); checkpoint {committed.path}", flush=True)
            if self.recipe.eval.stage_end:
                for hook in self.on_stage_end:
                    hook(committed.tag, index)
        if last:
            self.meter.close()

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What the run's checkpoint holds of the loop (the engine saves the weights, the optimizer
        and the LR schedule): counters, and the open stage's batch stream, curriculum, policy and
        surgery state (None between stages)."""
        open_ = self.stream is not None
        return {
            "counters": asdict(self.counters),
            "stream": self.stream.state_dict() if self.stream is not None else None,
            "curriculum": self.progress.state_dict() if open_ and self.progress is not None else None,
            # Under loss_weight/token_weight the policy is not the stream's sampler: saved on its own.
            "policy": self.policy.state_dict() if open_ and self.apply != "sample" else None,
            "surgery": self.task_step.state_dict() if open_ and self.task_step is not None else None,
        }

    def rank_state_dict(self) -> dict[str, Any]:
        """This rank's own state: its RNG and its loss sums since the last log line and dev
        evaluation (without them the first averages after a resume would cover fewer steps than
        the uninterrupted run's), and its shard of the surgery target."""
        return {"torch": torch.get_rng_state(), "log": self._acc, "eval": self._acc_eval,
                "target": None if self.task_step is None else self.task_step.target}

    def load_state_dict(self, state: dict[str, Any], rank_state: dict[str, Any]) -> None:
        """The inverse of state_dict and rank_state_dict: the stage that was open is opened again
        (without its transitions) and its parts take their saved state."""
        self.counters = Counters(**state["counters"])
        if rank_state:
            torch.set_rng_state(rank_state["torch"])
            self._acc.copy_(rank_state["log"])
            self._acc_eval.copy_(rank_state["eval"])
        if self.counters.finished or state.get("stream") is None:
            return
        self.open_stage(self.counters.stage, fresh=False)
        assert self.stream is not None and self.progress is not None
        self.stream.load_state_dict(state["stream"])
        self.progress.load_state_dict(state["curriculum"])
        if state.get("policy") is not None:
            self.policy.load_state_dict(state["policy"])
        if state.get("surgery") is not None and self.task_step is not None:
            self.task_step.load_state_dict(state["surgery"], rank_state.get("target"))
