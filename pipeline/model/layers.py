"""Transformer layers that run on the real tokens of a right-padded batch only.

Position-wise work (projections, feed-forward, LayerNorm, dropout, residuals) is most of a
step's FLOPs; length-bucketed batches still carry 10-25% padding, so the layers take packed
[N, D] rows and only attention sees the padded [B, T] layout (`Packing.pad` / `Packing.pack`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Packing:
    """Which positions of a [B, T] token batch are real (not `pad_id`), as flat row indices."""

    def __init__(self, tokens: Tensor, pad_id: int) -> None:
        self.b, self.t = tokens.shape
        self.rows = tokens.reshape(-1).ne(pad_id).nonzero().squeeze(1)

    def pad(self, x: Tensor) -> Tensor:
        """[N, F] -> [B, T, F], zeros at the pads."""
        out = x.new_zeros(self.b * self.t, x.shape[-1]).index_copy_(0, self.rows, x)
        return out.view(self.b, self.t, -1)

    def pack(self, x: Tensor) -> Tensor:
        """[B, T, F] -> [N, F]."""
        return x.reshape(self.b * self.t, -1).index_select(0, self.rows)

    def positions(self) -> Tensor:
        return self.rows % self.t


def _keep_mask(shape: torch.Size, p: float, device: torch.device) -> Tensor:
    # On CPU, F.dropout draws one float Bernoulli per element; one 64-bit draw per four elements,
    # 16 bits each compared to a threshold, costs a third as much (p is resolved to 2^-16).
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    return words.view(torch.int16)[:n].view(shape) >= round(p * 65536) - 32768


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    return torch.where(_keep_mask(x.shape, p, x.device), x * (1.0 / (1.0 - p)), 0.0)


class _AddDropout(torch.autograd.Function):
    """x + dropout(y) in two passes over memory where autograd's ops take five; the backward is
    made of differentiable ops, so double backward (curvature_aware's Hessian-vector products) still works."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor, p: float) -> Tensor:
        keep = _keep_mask(y.shape, p, y.device)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return torch.where(keep, torch.add(x, y, alpha=ctx.scale), x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        (keep,) = ctx.saved_tensors
        return grad, torch.where(keep, grad * ctx.scale, 0.0), None


def add_dropout(x: Tensor, y: Tensor, p: float, training: bool) -> Tensor:
    """The residual x + dropout(y)."""
    if not training or p == 0.0:
        return x + y
    if y.device.type != "cpu":
        return x + F.dropout(y, p, True)
    return _AddDropout.apply(x, y, p)


def xavier_blocks(linear: nn.Linear, block: int) -> None:
    # Fused projections are initialised as the separate d x d matrices they stand for.
    for chunk in linear.weight.data.split(block, dim=0):
        nn.init.xavier_uniform_(chunk)
    nn.init.zeros_(linear.bias)


class FeedForward(nn.Module):
    def __init__(self, d: int, ffn: int, activation_dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2, self.p = nn.Linear(d, ffn), nn.Linear(ffn, d), activation_dropout
        xavier_blocks(self.fc1, ffn)
        xavier_blocks(self.fc2, d)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.fc1(x), inplace=True)  # fc1's backward does not need its output
        return self.fc2(dropout(h, self.p, self.training))


class SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int, p: float) -> None:
        super().__init__()
        self.heads, self.p = heads, p
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        xavier_blocks(self.qkv, d)
        xavier_blocks(self.out, d)

    def forward(self, x: Tensor, packing: Packing, keep: Tensor | None, causal: bool) -> Tensor:
        """x [N, D] packed rows of a [B, T] batch; keep [B, 1, 1, T] bool or None."""
        b, t = packing.b, packing.t
        qkv = packing.pad(self.qkv(x)).view(b, t, 3, self.heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        o = attention(q, k, v, keep, causal, self.p if self.training else 0.0)
        return self.out(packing.pack(o.transpose(1, 2)))

    def step(self, x: Tensor, kv: Tensor, t: int, hide: Tensor | None) -> Tensor:
        """Inference only. x [n * beam, D] is position t of n sentences' beams; kv [2, n, H, steps * beam, Dh]
        is this layer's cache, slot t * beam + b written by beam b at step t; hide [n, 1, beam, (t+1) * beam]
        masks the slots off each beam's own path (None when beam is 1)."""
        rows, d = x.shape
        n = kv.shape[1]
        beam = rows // n
        qkv = self.qkv(x).view(n, beam, 3, self.heads, -1)
        kv[:, :, :, t * beam : (t + 1) * beam] = qkv[:, :, 1:].permute(2, 0, 3, 1, 4)
        k, v = kv[:, :, :, : (t + 1) * beam].unbind(0)  # [n, H, (t+1) * beam, Dh], contiguous per head
        o = attend(qkv[:, :, 0].transpose(1, 2), k, v, hide)
        return self.out(o.transpose(1, 2).reshape(rows, d))


def attention(q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None, causal: bool, p: float) -> Tensor:
    """Training attention over [B, H, T, Dh]; keep [B, 1, 1, S] True where a key may be attended.

    On CPU, at translation's short lengths, `attend`'s two products and softmax run 1.5-2.5× faster
    forward and backward than the flash-attention kernel (whose tiles suit long sequences); other
    devices keep the fused kernel, which also spares the [T, S] score memory.
    """
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p, is_causal=causal)
    hide = None if keep is None else ~keep
    if causal:
        future = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).triu_(1)
        hide = future if hide is None else hide | future
    return attend(q, k, v, hide, p)


def attend(q: Tensor, k: Tensor, v: Tensor, hide: Tensor | None, p: float = 0.0) -> Tensor:
    """softmax(q k^T / sqrt(Dh)) v, `hide` (True = masked) broadcast over the scores, dropout p on
    the probabilities. Decoding calls it directly: at one to four queries a head two batched
    matmuls beat the CPU flash-attention kernel and read the cache's strided slots without a copy."""
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
    if hide is not None:
        scores.masked_fill_(hide, float("-inf"))
    probs = scores.softmax(-1, dtype=torch.float32).to(v.dtype)
    if p > 0.0:
        probs = F.dropout(probs, p, True)
    return torch.matmul(probs, v)


class EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, p: float, attn_p: float, act_p: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = SelfAttention(d, heads, attn_p)
        self.ffn = FeedForward(d, ffn, act_p)
        self.p = p

    def forward(self, x: Tensor, packing: Packing, keep: Tensor) -> Tensor:
        x = add_dropout(x, self.attn(self.ln1(x), packing, keep, False), self.p, self.training)
        return add_dropout(x, self.ffn(self.ln2(x)), self.p, self.training)


class DecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, p: float, attn_p: float, act_p: float) -> None:
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = SelfAttention(d, heads, attn_p)
        # The cross-attention K/V projection lives in the model, one GEMM for all layers.
        self.cross_q, self.cross_out = nn.Linear(d, d), nn.Linear(d, d)
        xavier_blocks(self.cross_q, d)
        xavier_blocks(self.cross_out, d)
        self.ffn = FeedForward(d, ffn, act_p)
        self.heads, self.p, self.attn_p = heads, p, attn_p

    def _cross(self, q: Tensor, k: Tensor, v: Tensor, keep: Tensor) -> Tensor:
        """q [B, T, D] projected queries; k, v [B, H, S, Dh]; keep [B, 1, 1, S] -> [B, T, D]."""
        b, t, d = q.shape
        p = self.attn_p if self.training else 0.0
        o = attention(q.view(b, t, self.heads, -1).transpose(1, 2), k, v, keep, False, p)
        return o.transpose(1, 2).reshape(b, t, d)

    def forward(self, x: Tensor, packing: Packing, ckv: Tensor, keep: Tensor) -> Tensor:
        """ckv [B, S, 2, H, Dh]: this layer's cross-attention keys and values."""
        x = add_dropout(x, self.self_attn(self.ln1(x), packing, None, True), self.p, self.training)
        k, v = ckv.permute(2, 0, 3, 1, 4).unbind(0)
        o = packing.pack(self._cross(packing.pad(self.cross_q(self.ln2(x))), k, v, keep))
        x = add_dropout(x, self.cross_out(o), self.p, self.training)
        return add_dropout(x, self.ffn(self.ln3(x)), self.p, self.training)

    def step(self, x: Tensor, kv: Tensor, t: int, hide: Tensor | None, ckv: Tensor, src_pad: Tensor) -> Tensor:
        """Inference only: x [n * beam, D]; ckv [2, n, H, S, Dh] contiguous, one copy per sentence, which
        all its beams query at once; src_pad [n, 1, 1, S] True at source pads."""
        x = x + self.self_attn.step(self.ln1(x), kv, t, hide)
        n, heads = ckv.shape[1], self.heads
        q = self.cross_q(self.ln2(x)).view(n, -1, heads, x.shape[1] // heads).transpose(1, 2)
        o = attend(q, ckv[0], ckv[1], src_pad).transpose(1, 2).reshape(x.shape)
        x = x + self.cross_out(o)
        return x + self.ffn(self.ln3(x))
