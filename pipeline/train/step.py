"""One optimizer step without gradient surgery: each micro-batch's per-token loss, summed per
direction (scatter-add) and weighted per direction, then DeepSpeed's backward and step.

A step's per-direction sums live in `step_acc` (the rows of `distill.lssd.ROWS`: loss, nll,
tokens, DoReMi's clipped excess over the reference, LSSD's distillation sums × every direction of
the corpus); one all-reduce per step (`host.reduce_stats`) gives
every rank the global sums, whether any loss was non-finite, and whether any rank was asked to stop.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pipeline.balance.loss_weights import direction_scales
from pipeline.checkpoint.weights import clipped_excess
from pipeline.core import faults
from pipeline.data.batches import StepBatches
from pipeline.distill.lssd import EXCESS, ROWS, TOKENS, accumulate, token_losses
from pipeline.engine.collectives import Dist, all_reduce_sum, peak_memory_mb
from pipeline.engine.held_bytes import HELD_KEYS
from pipeline.gradients.host import StepHost
from pipeline.train.stage_setup import StageRuntime


def token_scales(host: StepHost, stage: StageRuntime, sb: StepBatches) -> torch.Tensor:
    """Per-direction factor on summed token losses (see `loss_weights.direction_scales`)."""
    n_dirs = len(host.names)
    n = host.dist.world * host.recipe.train.grad_accum
    if stage.apply == "sample":  # no per-direction weights to ask the policy for
        return torch.full((n_dirs,), n / max(1, sb.global_tgt_tokens), dtype=torch.float32)
    assert stage.stream.p is not None
    w = np.zeros(n_dirs)
    w[stage.stage_ids] = stage.policy.probabilities(host.counters.stage_step)
    tokens = np.zeros(n_dirs)
    for d, k in sb.dir_tokens.items():
        tokens[d] = k
    share = np.ones(n_dirs)
    share[stage.stream.dir_ids] = stage.stream.p
    return torch.tensor(direction_scales(stage.apply, n, w, tokens, share), dtype=torch.float32)


def gather_memory(dist: Dist) -> torch.Tensor:
    """Every rank's [peak host, peak GPU, host] MB, for ZeRO comparisons: each rank fills its own
    row of a table summed over ranks."""
    memory = torch.zeros(dist.world, 3, dtype=torch.float64)
    memory[dist.rank] = torch.tensor(peak_memory_mb(dist.device), dtype=torch.float64)
    return all_reduce_sum(memory)


def gather_held(dist: Dist, held: dict[str, int] | None) -> list[dict[str, int]] | None:
    """Every rank's `Engine.held_bytes` (keys: `HELD_KEYS`), or None when some rank has none (a
    log row that was not due before its step). Bytes stay exact in float64 below 2**53."""
    table = torch.zeros(dist.world, len(HELD_KEYS) + 1, dtype=torch.float64)
    if held is not None:
        table[dist.rank] = torch.tensor([1.0, *(float(held[k]) for k in HELD_KEYS)], dtype=torch.float64)
    table = all_reduce_sum(table)
    if not bool((table[:, 0] == 1).all()):
        return None
    return [{k: int(v) for k, v in zip(HELD_KEYS, row[1:].tolist())} for row in table]


def per_direction(stats: torch.Tensor, n_dirs: int, stage_ids: np.ndarray) -> np.ndarray:
    """The step's sums (rows: `lssd.ROWS`) × the stage's directions, from `reduce_stats`."""
    return stats.reshape(ROWS, n_dirs).numpy()[:, stage_ids]


def plain_step(host: StepHost, stage: StageRuntime, sb: StepBatches, scales: torch.Tensor,
               step_acc: torch.Tensor, before_step: Callable[[], None] | None = None) -> torch.Tensor:
    """Forward and backward every micro-batch of this rank, then the optimizer step; returns the
    step's stats summed over ranks (see `reduce_stats`). Fills `step_acc` with this rank's sums.
    `before_step` is called between the last backward and the optimizer step (a measurement)."""
    engine, dev, step = host.engine, host.dist.device, host.counters.step
    stats = torch.zeros(0)
    active = stage.distill.method == "lssd" and host.counters.stage_step >= stage.distill.start_after
    for i, mb in enumerate(sb.micro):
        engine.set_boundary(i == len(sb.micro) - 1)
        src, tgt_in, tgt_out, d = mb.src.to(dev), mb.tgt_in.to(dev), mb.tgt_out.to(dev), mb.direction
        tl = token_losses(engine, host.teachers, stage.distill, active, src, tgt_in, tgt_out, d)
        objective = tl.objective
        if i == 0 and host.dist.is_main and faults.armed("nan_loss", step + 1):
            objective = objective * float("nan")
            tl.loss = tl.loss * float("nan")
        seq_loss = objective.sum(1)
        accumulate(step_acc, d, tl, tgt_out)
        if stage.reference is not None:
            with torch.no_grad():
                ref = stage.reference.nll(src, tgt_in, tgt_out)
                step_acc[EXCESS].index_add_(0, d, clipped_excess(tl.nll, ref, tgt_out).double().cpu())
        if i == len(sb.micro) - 1:
            # One all-reduce per step: every rank learns whether any loss was non-finite
            # (then all skip the update), the step's per-direction losses (for policies) and
            # whether any rank was asked to stop (preemption).
            stats = host.reduce_stats(step_acc)
            if not bool(torch.isfinite(stats.sum())):
                engine.skip_next_step()
            elif stage.reference is not None:
                # DoReMi updates its weights from the step's excess before the loss that the
                # step's gradient comes from (with grad_accum > 1 the earlier micro-batches
                # used the previous weights, as in the reference code).
                pd = per_direction(stats, len(host.names), stage.stage_ids)
                stage.policy.observe_excess(host.counters.stage_step + 1, pd[EXCESS], pd[TOKENS])  # type: ignore[attr-defined]
                scales = token_scales(host, stage, sb).to(dev)
        engine.backward((seq_loss * scales[d.to(dev)]).sum())
        if before_step is not None and i == len(sb.micro) - 1:
            before_step()
        engine.step()
    return stats
