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
    def forward(ctx: Any, logits: Tensor, target: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        n, v = logits.shape
        lse = logits.new_empty(n, dtype=torch.float32)
        mean = torch.empty_like(lse)
        step = _rows_per_block(logits)
        for i in range(0, n, step):
            x = logits[i : i + step].float()
            torch.logsumexp(x, -1, out=lse[i : i + step])
            torch.mean(x, -1, out=mean[i : i + step])
        nll = lse - logits.gather(1, target[:, None]).squeeze(1).float()
        # -(eps / V)·Σ log p = eps·(lse - mean(logits))
        loss = (1 - eps) * nll + eps * (lse - mean) if eps else nll
        ctx.save_for_backward(logits, target, lse)
        ctx.eps = eps
        return loss, nll

    @staticmethod
    def backward(ctx: Any, g_loss: Tensor | None, g_nll: Tensor | None) -> tuple[Tensor, None, None]:
        logits, target, lse = ctx.saved_tensors
        eps = ctx.eps
        n, v = logits.shape
        g_loss = g_loss if g_loss is not None else lse.new_zeros(n)
        g_all = g_loss + g_nll if g_nll is not None else g_loss
        shift = (eps / v) * g_loss  # the smoothing's share, the same for every entry of a row
        onehot = (1 - eps) * g_loss + (g_nll if g_nll is not None else 0)
        if torch.is_grad_enabled():
            # create_graph (Hessian-vector products): the same gradient from differentiable,
            # out-of-place ops, with softmax recomputed from the logits rather than the saved lse.
            grad = torch.softmax(logits.float(), -1) * g_all[:, None] - shift[:, None]
            return grad.scatter_add(1, target[:, None], -onehot[:, None]).to(logits.dtype), None, None
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
            if not in_place:
                grad[rows] = p
        grad.scatter_add_(1, target[:, None], (-onehot[:, None]).to(grad.dtype))
        return grad, None, None


def smoothed_nll(logits: Tensor, target: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(label-smoothed loss, nll) per row of logits [N, V] for target [N], both float32 [N]."""
    return _SmoothedNll.apply(logits, target, eps)
