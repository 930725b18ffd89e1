"""Label-smoothed cross-entropy straight from logits, with a hand-written backward.

The [N, V] logits of a step are 100+ MB, far past the caches, and memory bandwidth rather than
arithmetic bounds this loss. Autograd through log_softmax -> gather -> sum makes about nine
passes over [N, V] in memory; here each block of rows is read into cache once in the forward
(log-sum-exp, mean and target logit together) and once in the backward, whose gradient
softmax - ((1 - eps)·onehot + eps/V) is written in one go.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

_BLOCK_BYTES = 4 << 20  # a block of rows and its float32 temporaries stay within L2/L3


def _rows_per_block(logits: Tensor) -> int:
    n, vocab = logits.shape
    if logits.device.type != "cpu":  # GPU bandwidth makes blocks pointless; launches are not free
        return max(1, n)
    return max(1, _BLOCK_BYTES // (4 * vocab))


class _SmoothedNll(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor, eps: float, q: Tensor | None
                ) -> tuple[Tensor, Tensor, Tensor]:
        n, v = logits.shape
        lse = logits.new_empty(n, dtype=torch.float32)
        mean = torch.empty_like(lse)
        qz = torch.zeros_like(lse)
        step = _rows_per_block(logits)
        for i in range(0, n, step):
            x = logits[i : i + step].float()
            torch.logsumexp(x, -1, out=lse[i : i + step])
            torch.mean(x, -1, out=mean[i : i + step])
            if q is not None:  # Σ_v q(v)·z(v), read in the same pass over the block
                qz[i : i + step] = (q[i : i + step].float() * x).sum(-1)
        nll = lse - logits.gather(1, target[:, None]).squeeze(1).float()
        # -(eps / V)·Σ log p = eps·(lse - mean(logits))
        loss = (1 - eps) * nll + eps * (lse - mean) if eps else nll
        # -Σ_v q(v) log p(v) = lse - Σ_v q(v) z(v) for a distribution q (rows summing to 1)
        kd = lse - qz if q is not None else lse.new_zeros(n)
        ctx.save_for_backward(logits, target, lse, *([] if q is None else [q]))
        ctx.eps = eps
        return loss, nll, kd

    @staticmethod
    def backward(ctx: Any, g_loss: Tensor | None, g_nll: Tensor | None, g_kd: Tensor | None
                 ) -> tuple[Tensor, None, None, None]:
        logits, target, lse, *rest = ctx.saved_tensors
        q = rest[0] if rest else None
        eps = ctx.eps
        n, v = logits.shape
        g_loss = g_loss if g_loss is not None else lse.new_zeros(n)
        g_kd = g_kd if g_kd is not None and q is not None else None
        g_all = g_loss + g_nll if g_nll is not None else g_loss
        if g_kd is not None:
            g_all = g_all + g_kd
        shift = (eps / v) * g_loss  # the smoothing's share, the same for every entry of a row
        onehot = (1 - eps) * g_loss + (g_nll if g_nll is not None else 0)
        if torch.is_grad_enabled():
            # create_graph (Hessian-vector products): the same gradient from differentiable,
            # out-of-place ops, with softmax recomputed from the logits rather than the saved lse.
            grad = torch.softmax(logits.float(), -1) * g_all[:, None] - shift[:, None]
            if g_kd is not None:
                grad = grad - g_kd[:, None] * q.float()
            return grad.scatter_add(1, target[:, None], -onehot[:, None]).to(logits.dtype), None, None, None
        grad = torch.empty_like(logits)
        in_place = grad.dtype == torch.float32  # straight into the gradient, no block copy
        step = _rows_per_block(logits)
        for i in range(0, n, step):
            rows = slice(i, i + step)
            if in_place:
                p = torch.sub(logits[rows], lse[rows, None], out=grad[rows])
            else:
                p = logits[rows].float() - lse[rows, None]
            p.exp_().mul_(g_all[rows, None]).sub_(shift[rows, None])
            if g_kd is not None:  # the distillation target's share: -g_kd·q
                p.sub_(q[rows].float() * g_kd[rows, None])
            if not in_place:
                grad[rows] = p
        grad.scatter_add_(1, target[:, None], (-onehot[:, None]).to(grad.dtype))
        return grad, None, None, None


def smoothed_nll(logits: Tensor, target: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(label-smoothed loss, nll) per row of logits [N, V] for target [N], both float32 [N]."""
    loss, nll, _ = _SmoothedNll.apply(logits, target, eps, None)
    return loss, nll


def smoothed_nll_kd(logits: Tensor, target: Tensor, eps: float, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(label-smoothed loss, nll, cross-entropy against the distribution q [N, V]) per row, float32 [N],
    in one pass over the logits; the third is what word-level distillation minimises (its gradient
    softmax - q)."""
    return _SmoothedNll.apply(logits, target, eps, q)
