"""LSSD's training objective (Huang et al. 2022; their criterion
`label_smoothed_cross_entropy_with_online_distillation`), per target token:

    objective = (LS-CE + w · gate · KD) / 2   for an example whose direction has a teacher,
    objective = LS-CE                          for one whose direction has none yet,

with KD = -Σ_v q(v) log p(v) the cross-entropy of the student p against its direction's teacher q
(no temperature). The gates compare the teacher's and the student's probability of the reference
token, both detached:
- hard: 1 where q(y) > p(y), `hard_floor` (their 0.2) elsewhere; at sentence level the sums of
  q(y) and p(y) over the sentence's tokens are compared, and the gate holds for the whole sentence;
- soft: min(q(y) / p(y), 1); at sentence level min(mean q(y) / mean p(y), 1).
Their batches hold one language each; ours mix directions, so the rule is applied per example.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.config import DistillConfig
from pipeline.distill.teachers import TeacherBank
from pipeline.engine.ds_engine import Engine


@dataclass
class TokenLosses:
    """Per target token [B, T], 0 at pads: what to backpropagate, and what the step logs."""

    objective: Tensor  # LSSD's combination (the label-smoothed loss where no teacher applies)
    loss: Tensor  # label-smoothed cross-entropy
    nll: Tensor
    kd: Tensor  # cross-entropy against the teacher (ungated; 0 where no teacher applies)
    gate: Tensor  # the gate (0 where no teacher applies)
    taught: Tensor  # bool: a teacher applies to the token


def gate(cfg: DistillConfig, p_teacher: Tensor, p_student: Tensor, real: Tensor) -> Tensor:
    """The gate [B, T] from the teacher's and student's probabilities of the reference tokens [B, T]
    (pads: `real` False). 1 everywhere for gate: none."""
    if cfg.gate == "none":
        return real.float()
    pt, ps = p_teacher * real, p_student * real
    if cfg.level == "sentence":  # (for soft: the ratio of means, the token count cancels)
        pt, ps = pt.sum(1, keepdim=True), ps.sum(1, keepdim=True)
    if cfg.gate == "hard":
        g = torch.where(pt > ps, 1.0, cfg.hard_floor)
    else:  # a student probability that underflowed to 0 is beaten by any teacher: full weight
        g = torch.where(ps > 0, torch.clamp(pt / ps.clamp_min(1e-30), max=1.0), 1.0)
    return g.expand_as(real) * real


def objective(cfg: DistillConfig, loss: Tensor, kd: Tensor, g: Tensor, taught: Tensor) -> Tensor:
    return torch.where(taught, (loss + cfg.weight * g * kd) / 2, loss)


def token_losses(engine: Engine, bank: TeacherBank | None, cfg: DistillConfig, active: bool,
                 src: Tensor, tgt_in: Tensor, tgt_out: Tensor, direction: Tensor) -> TokenLosses:
    """The student's forward (through the engine) with LSSD's term where it applies: `active` says
    whether the stage distils at this step; rows whose direction has no teacher yet train on the
    label-smoothed loss alone."""
    real = tgt_out.ne(0)
    if not active or bank is None or not bool(bank.has_teacher(direction, cfg.when).any()):
        loss, nll = engine(src, tgt_in, tgt_out)
        zeros = torch.zeros_like(loss)
        return TokenLosses(loss, loss, nll, zeros, zeros, torch.zeros_like(real))
    q, covered = bank.distributions(src, tgt_in, tgt_out, direction, cfg.when)
    loss, nll, kd = engine(src, tgt_in, tgt_out, q)
    taught = torch.zeros_like(real)
    taught[real] = covered
    with torch.no_grad():
        p_teacher = torch.zeros_like(loss)
        p_teacher[real] = q.gather(1, tgt_out[real][:, None]).squeeze(1)
        g = gate(cfg, p_teacher, torch.exp(-nll.detach()), taught)
    kd = kd * taught
    return TokenLosses(objective(cfg, loss, kd, g, taught), loss, nll, kd.detach(), g, taught)


# The rows of a step's per-direction sums (`step_acc`, [ROWS, directions]): the plain step and the
# surgery step fill them alike; DoReMi's clipped excess is the plain step's own.
LOSS, NLL, TOKENS, EXCESS, KD, GATE, FULL, TAUGHT = range(8)
ROWS = 8


@torch.no_grad()
def accumulate(step_acc: Tensor, direction: Tensor, tl: TokenLosses, tgt_out: Tensor) -> None:
    """Add a micro-batch's sums per direction: losses and tokens, and LSSD's KD, gate, fully-gated
    and taught tokens."""
    for row, per_token in ((LOSS, tl.loss), (NLL, tl.nll), (TOKENS, tgt_out.ne(0)), (KD, tl.kd), (GATE, tl.gate),
                           (FULL, tl.taught & (tl.gate >= 1)), (TAUGHT, tl.taught)):
        step_acc[row].index_add_(0, direction, per_token.detach().double().sum(1).cpu())
