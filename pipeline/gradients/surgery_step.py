"""A training step as one backward pass per task, for gradient surgery and similarity diagnostics.

Tasks are directions or groups of directions. Each task's examples of the step's micro-batch go
through their own forward and backward (a rank without examples of a task runs one row with
weight 0, because under ZeRO every backward is a collective); after each backward the rank copies
its shard of the reduced task gradient and clears it. The Gram matrix of the task gradients (per
block: the whole model, or each layer) comes from one all-reduce; the combination is solved on it
(`pipeline/gradients/surgery.py`) and written back into the last task's gradient buffers before the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.config import DistillConfig, SurgeryConfig
from pipeline.core.rng import rng_for
from pipeline.data.batches import Batch, StepBatches, collate
from pipeline.distill.lssd import accumulate, token_losses
from pipeline.engine.collectives import all_reduce_sum
from pipeline.gradients import surgery
from pipeline.gradients.host import StepHost

_ORDER, _DROP, _TARGET = 0x5047, 0x4744, 0x5450


@dataclass
class TaskCosines:
    """The step's cosines between the task gradients (logged as `grad_cosine` in metrics.jsonl)."""

    tasks: list[str]
    cosine: list[list[float]]


def layer_key(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]


class TaskStep:
    def __init__(self, trainer: StepHost, cfg: SurgeryConfig, stage_names: list[str],
                 distill: DistillConfig | None = None) -> None:
        self.t, self.cfg = trainer, cfg
        self.distill = distill or DistillConfig()  # LSSD's term joins each task's loss
        manifest = trainer.corpus.manifest
        if cfg.tasks == "directions":
            members = {n: [n] for n in stage_names}
        elif cfg.groups:
            members = {g: manifest.select(sel, trained=True) for g, sel in cfg.groups.items()}
        else:
            members = {g: names for g, names in manifest.groups().items()}
        members = {k: [n for n in v if n in stage_names] for k, v in members.items()}
        self.tasks = [k for k, v in members.items() if v]
        self.task_of = np.full(len(trainer.names), -1)
        for k, task in enumerate(self.tasks):
            for n in members[task]:
                self.task_of[trainer.names.index(n)] = k
        missing = [n for n in stage_names if self.task_of[trainer.names.index(n)] < 0]
        if missing or len(self.tasks) < 2:
            raise ValueError(f"surgery tasks {self.tasks} must cover the stage's directions with at least two "
                             f"tasks (not covered: {missing}); set surgery.tasks: directions or surgery.groups")
        # The shard layout is only known once gradients exist: blocks are found at the first step.
        self.blocks: list[list[tuple[int, int]]] = []
        n = len(self.tasks)
        self.phi_hat = np.zeros((self._count_blocks(), n, n))
        self.target: torch.Tensor | None = None
        self.target_step = -1

    def _count_blocks(self) -> int:
        if self.cfg.method != "gradvac" or self.cfg.granularity == "model":
            return 1
        return len({layer_key(n) for n, _ in self.t.engine.module.named_parameters()})

    def _blocks(self, granularity: str) -> list[list[tuple[int, int]]]:
        layout = self.t.engine.shard_layout()
        if granularity == "model":
            return [[(0, sum(n for _, n in layout))]]
        # every layer gets a block (possibly empty on this rank) so all ranks agree on the count
        ranges: dict[str, list[tuple[int, int]]] = {layer_key(n): [] for n, _ in self.t.engine.module.named_parameters()}
        pos = 0
        for name, n in layout:
            if n:
                ranges[layer_key(name)].append((pos, pos + n))
            pos += n
        return [v for _, v in sorted(ranges.items())]

    def _gram(self, shards: torch.Tensor) -> np.ndarray:
        s = shards.double()
        grams = []
        for block in self.blocks:
            g = torch.zeros(len(s), len(s), dtype=torch.float64, device=s.device)
            for a, b in block:
                g += s[:, a:b] @ s[:, a:b].T
            grams.append(g)
        return all_reduce_sum(torch.stack(grams)).cpu().numpy()

    def _rows(self, mb: Batch, mask: torch.Tensor) -> tuple[Batch, float]:
        idx = torch.nonzero(mask).squeeze(1)
        if not len(idx):
            return Batch(mb.src[:1], mb.tgt_in[:1], mb.tgt_out[:1], mb.direction[:1], 0), 0.0
        return Batch(mb.src[idx], mb.tgt_in[idx], mb.tgt_out[idx], mb.direction[idx], 0), 1.0

    def _target(self, step: int) -> torch.Tensor:
        """This rank's shard of the gradient of the mean dev loss over the stage's directions."""
        t = self.t
        names = [t.names[i] for i in t.stage_ids]
        rng = rng_for(t.recipe.seed, t.counters.stage, step, _TARGET)
        per = max(1, self.cfg.target_tokens // len(names))
        splits = [t.corpus.splits["dev"][n] for n in names]
        pairs = []
        for d, split in enumerate(splits):
            order = rng.permutation(len(split))
            sizes = np.cumsum(split.tgt_lens[order] + 1)
            pairs += [(d, int(i)) for i in order[: max(1, int(np.searchsorted(sizes, per)))]]
        tags = [t.corpus.tokenizer.tag_id(next(x.tgt for x in t.corpus.manifest.directions if x.name == n))
                for n in names]
        batch = collate(pairs, splits, tags, list(t.stage_ids))
        mine, weight = self._rows(batch, torch.arange(len(pairs)) % t.dist.world == t.dist.rank)
        dev = t.dist.device
        t.engine.set_boundary(True)
        loss_tok, _ = t.engine(mine.src.to(dev), mine.tgt_in.to(dev), mine.tgt_out.to(dev))
        # DeepSpeed divides by world (the average) and by grad_accum (its loss scaling)
        t.engine.backward(loss_tok.sum() * weight * t.dist.world * t.recipe.train.grad_accum / batch.tgt_tokens)
        shard = t.engine.local_grad_shard()
        t.engine.clear_grads()
        return shard

    def run(self, sb: StepBatches, scales: torch.Tensor, step_acc: torch.Tensor) -> tuple[torch.Tensor, TaskCosines]:
        """Forward/backward per task, combine, write the gradient. Returns the step's all-reduced
        [loss, nll, tokens] per direction (as the plain step does) and what to log."""
        t, cfg = self.t, self.cfg
        step = t.counters.step
        if cfg.method == "target_projection" and (self.target is None or t.counters.stage_step % cfg.refresh == 0):
            self.target, self.target_step = self._target(step), step
        dev = t.dist.device
        active = self.distill.method == "lssd" and t.counters.stage_step >= self.distill.start_after
        shards = []
        for k in range(len(self.tasks)):
            for a, mb in enumerate(sb.micro):  # the task's rows of every micro-batch, then reduce
                t.engine.set_boundary(a == len(sb.micro) - 1)
                sub, weight = self._rows(mb, torch.as_tensor(self.task_of[mb.direction.numpy()] == k))
                tgt_out = sub.tgt_out.to(dev)
                tl = token_losses(t.engine, t.teachers, self.distill, active, sub.src.to(dev), sub.tgt_in.to(dev),
                                  tgt_out, sub.direction)
                seq_loss = tl.objective.sum(1)
                if weight:
                    accumulate(step_acc, sub.direction, tl, tgt_out)
                t.engine.backward((seq_loss * scales[sub.direction.to(dev)]).sum() * weight)
            shards.append(t.engine.local_grad_shard())
            if not self.blocks:
                self.blocks = self._blocks(cfg.granularity if cfg.method == "gradvac" else "model")
            if k < len(self.tasks) - 1:
                t.engine.clear_grads()
        stats = t.reduce_stats(step_acc)
        vectors = torch.stack(shards + ([self.target] if cfg.method == "target_projection" else []))
        grams = self._gram(vectors)
        combined = self._combine(vectors, grams, step)
        t.engine.set_local_grad_shard(combined)
        g = grams.sum(0)[: len(self.tasks), : len(self.tasks)]
        return stats, TaskCosines(self.tasks, np.round(surgery.cosines(g), 5).tolist())

    def _combine(self, vectors: torch.Tensor, grams: np.ndarray, step: int) -> torch.Tensor:
        cfg, t = self.cfg, self.t
        n = len(self.tasks)
        if cfg.method in ("none", "pcgrad", "target_projection"):
            if cfg.method == "none":
                c = np.ones(n)
            elif cfg.method == "pcgrad":
                c = surgery.pcgrad(grams.sum(0), rng_for(t.recipe.seed, step, _ORDER))
            else:
                c = surgery.target_projection(grams.sum(0))
            return (torch.as_tensor(c, dtype=torch.float64, device=vectors.device) @ vectors.double()).float()
        if cfg.method == "graddrop":
            u = torch.from_numpy(rng_for(t.recipe.seed, step, t.dist.rank, _DROP).random(vectors.shape[1])).to(vectors.device)
            return surgery.graddrop(vectors.double(), u, cfg.leak).float()
        out = torch.zeros(vectors.shape[1], dtype=torch.float64, device=vectors.device)
        rng = rng_for(t.recipe.seed, step, _ORDER)
        for b, block in enumerate(self.blocks):
            c, self.phi_hat[b] = surgery.gradvac(grams[b], self.phi_hat[b], cfg.beta, rng)
            for a, z in block:
                out[a:z] = torch.as_tensor(c, dtype=torch.float64, device=vectors.device) @ vectors[:, a:z].double()
        return out.float()

    def state_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "phi_hat": self.phi_hat.tolist(), "target_step": self.target_step}

    def load_state_dict(self, state: dict[str, Any], target: torch.Tensor | None) -> None:
        if state["tasks"] != self.tasks:
            raise ValueError(f"surgery state is for tasks {state['tasks']}, this stage has {self.tasks}")
        self.phi_hat = np.array(state["phi_hat"])
        self.target_step, self.target = state["target_step"], target
