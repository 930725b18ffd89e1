"""A pre-LN Transformer encoder-decoder in plain torch, with a preallocated KV cache for decoding."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from .config import ModelConfig


@dataclass(frozen=True)
class ModelArch:
    d_model: int
    encoder_layers: int
    decoder_layers: int
    heads: int
    ffn_dim: int
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    label_smoothing: float = 0.1
    max_positions: int = 1024


PRESETS: dict[str, ModelArch] = {
    "tiny": ModelArch(d_model=256, encoder_layers=3, decoder_layers=3, heads=4, ffn_dim=1024),
    "base": ModelArch(d_model=512, encoder_layers=6, decoder_layers=6, heads=8, ffn_dim=2048),
    "big": ModelArch(d_model=1024, encoder_layers=6, decoder_layers=6, heads=16, ffn_dim=4096),
}


def resolve_arch(cfg: ModelConfig) -> ModelArch:
    """The preset, with every field that `cfg` sets (not None) taking precedence."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"unknown model preset {cfg.preset!r}; expected one of {sorted(PRESETS)}")
    base = PRESETS[cfg.preset]
    values = {f.name: getattr(base, f.name) for f in fields(ModelArch)}
    for name in values:
        value = getattr(cfg, name, None)
        if value is not None:
            values[name] = value
    return ModelArch(**values)


class EncoderOut(NamedTuple):
    memory: Tensor  # [B, S, D]
    src_pad_mask: Tensor  # [B, S] bool, True at pads

    def index_select(self, index: Tensor) -> EncoderOut:
        return EncoderOut(self.memory.index_select(0, index), self.src_pad_mask.index_select(0, index))


@dataclass
class DecoderCache:
    """Everything incremental decoding needs; the encoder output is folded into `cross_kv`.

    Time-major self-attention storage makes the filled prefix `self_kv[:length]` one contiguous
    block, so a beam reorder copies only what was written, straight into a second buffer (`spare`).
    """

    self_kv: Tensor  # [max_steps, L, N, 2, H, Dh]; positions < length are filled
    spare: Tensor  # flat buffer at least as large as self_kv, the target of the next reorder
    cross_kv: Tensor  # [N, S, L, 2, H, Dh]
    src_keep: Tensor  # [N, 1, 1, S] bool, True where attention is allowed
    length: int = 0


def sinusoids(length: int, dim: int) -> Tensor:
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(10000.0) / max(half - 1, 1)))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * freq[None]
    table = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(table, (0, dim - 2 * half))


def _xavier_blocks(linear: nn.Linear, block: int) -> None:
    # Fused projections are initialised as the separate d x d matrices they stand for.
    for chunk in linear.weight.data.split(block, dim=0):
        nn.init.xavier_uniform_(chunk)
    nn.init.zeros_(linear.bias)


class _FeedForward(nn.Module):
    def __init__(self, d: int, ffn: int, activation_dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2, self.p = nn.Linear(d, ffn), nn.Linear(ffn, d), activation_dropout
        _xavier_blocks(self.fc1, ffn)
        _xavier_blocks(self.fc2, d)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.fc1(x), inplace=True)  # fc1's backward does not need its output
        return self.fc2(F.dropout(h, self.p, self.training))


class _SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.p = heads, dropout
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        _xavier_blocks(self.qkv, d)
        _xavier_blocks(self.out, d)

    def forward(self, x: Tensor, keep: Tensor | None, causal: bool) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        p = self.p if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p, is_causal=causal)
        return self.out(o.transpose(1, 2).reshape(b, t, d))

    def step(self, x: Tensor, kv: Tensor, t: int) -> Tensor:
        """x [N, D] is position t; kv [max_steps, N, 2, H, Dh] is this layer's cache."""
        n, d = x.shape
        qkv = self.qkv(x).view(n, 3, self.heads, -1)
        kv[t] = qkv[:, 1:]
        k, v = kv[: t + 1].permute(2, 1, 3, 0, 4).unbind(0)  # [N, H, t+1, Dh] views
        p = self.p if self.training else 0.0
        o = F.scaled_dot_product_attention(qkv[:, 0, :, None], k, v, dropout_p=p)
        return self.out(o.reshape(n, d))


class _EncoderLayer(nn.Module):
    def __init__(self, a: ModelArch) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(a.d_model), nn.LayerNorm(a.d_model)
        self.attn = _SelfAttention(a.d_model, a.heads, a.attention_dropout)
        self.ffn = _FeedForward(a.d_model, a.ffn_dim, a.activation_dropout)
        self.p = a.dropout

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        x = x + F.dropout(self.attn(self.ln1(x), keep, False), self.p, self.training)
        return x + F.dropout(self.ffn(self.ln2(x)), self.p, self.training)


class _DecoderLayer(nn.Module):
    def __init__(self, a: ModelArch) -> None:
        super().__init__()
        d = a.d_model
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = _SelfAttention(d, a.heads, a.attention_dropout)
        # The cross-attention K/V projection lives in the model, one GEMM for all layers.
        self.cross_q, self.cross_out = nn.Linear(d, d), nn.Linear(d, d)
        _xavier_blocks(self.cross_q, d)
        _xavier_blocks(self.cross_out, d)
        self.ffn = _FeedForward(d, a.ffn_dim, a.activation_dropout)
        self.heads, self.p, self.attn_p = a.heads, a.dropout, a.attention_dropout

    def _cross(self, x: Tensor, ckv: Tensor, keep: Tensor) -> Tensor:
        """x [B, T, D]; ckv [B, S, 2, H, Dh]; keep [B, 1, 1, S]."""
        b, t, d = x.shape
        q = self.cross_q(x).view(b, t, self.heads, -1).transpose(1, 2)
        k, v = ckv.permute(2, 0, 3, 1, 4).unbind(0)
        p = self.attn_p if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p)
        return self.cross_out(o.transpose(1, 2).reshape(b, t, d))

    def forward(self, x: Tensor, ckv: Tensor, keep: Tensor) -> Tensor:
        x = x + F.dropout(self.self_attn(self.ln1(x), None, True), self.p, self.training)
        x = x + F.dropout(self._cross(self.ln2(x), ckv, keep), self.p, self.training)
        return x + F.dropout(self.ffn(self.ln3(x)), self.p, self.training)

    def step(self, x: Tensor, kv: Tensor, t: int, ckv: Tensor, keep: Tensor) -> Tensor:
        x = x + F.dropout(self.self_attn.step(self.ln1(x), kv, t), self.p, self.training)
        x = x + F.dropout(self._cross(self.ln2(x)[:, None], ckv, keep)[:, 0], self.p, self.training)
        return x + F.dropout(self.ffn(self.ln3(x)), self.p, self.training)


class Seq2SeqTransformer(nn.Module):
    def __init__(self, arch: ModelArch, vocab_size: int, pad_id: int) -> None:
        super().__init__()
        if arch.d_model % arch.heads:
            raise ValueError(f"d_model {arch.d_model} is not divisible by {arch.heads} heads")
        self.arch, self.vocab_size, self.pad_id = arch, vocab_size, pad_id
        d = arch.d_model
        self.embed = nn.Embedding(vocab_size, d, padding_idx=pad_id)
        nn.init.normal_(self.embed.weight, 0.0, d**-0.5)
        with torch.no_grad():
            self.embed.weight[pad_id].zero_()
        self.scale = math.sqrt(d)
        self.register_buffer("positions", sinusoids(arch.max_positions, d), persistent=False)
        self.encoder = nn.ModuleList(_EncoderLayer(arch) for _ in range(arch.encoder_layers))
        self.decoder = nn.ModuleList(_DecoderLayer(arch) for _ in range(arch.decoder_layers))
        self.cross_kv = nn.Linear(d, arch.decoder_layers * 2 * d)
        _xavier_blocks(self.cross_kv, d)
        self.enc_norm, self.dec_norm = nn.LayerNorm(d), nn.LayerNorm(d)

    @property
    def max_positions(self) -> int:
        return self.arch.max_positions

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _embed(self, tokens: Tensor) -> Tensor:
        t = tokens.shape[1]
        if t > self.arch.max_positions:
            raise ValueError(f"sequence of {t} tokens exceeds max_positions={self.arch.max_positions}")
        # One fused kernel for scale-and-add; positions are absolute indices, valid with right padding.
        e = self.embed(tokens)
        # DeepSpeed's bf16/fp16 modes cast parameters but keep buffers: match the embedding's dtype.
        x = torch.add(self.positions[:t].to(e.dtype), e, alpha=self.scale)
        return F.dropout(x, self.arch.dropout, self.training)

    def _cross_kv(self, memory: Tensor) -> Tensor:
        b, s, _ = memory.shape
        return self.cross_kv(memory).view(b, s, len(self.decoder), 2, self.arch.heads, -1)

    def encode(self, src: Tensor) -> EncoderOut:
        pad = src.eq(self.pad_id)
        keep = ~pad[:, None, None, :]
        x = self._embed(src)
        for layer in self.encoder:
            x = layer(x, keep)
        return EncoderOut(self.enc_norm(x), pad)

    def decoder_hidden(self, enc: EncoderOut, tgt_in: Tensor) -> Tensor:
        """Final-LayerNorm decoder states [B, T, D] for teacher-forced `tgt_in`."""
        ckv = self._cross_kv(enc.memory)
        keep = ~enc.src_pad_mask[:, None, None, :]
        x = self._embed(tgt_in)
        for i, layer in enumerate(self.decoder):
            x = layer(x, ckv[:, :, i], keep)
        return self.dec_norm(x)

    def logprobs(self, h: Tensor) -> Tensor:
        # float32 log_softmax straight from (possibly bf16) logits, without a separate upcast copy.
        return torch.log_softmax(F.linear(h, self.embed.weight), -1, dtype=torch.float32)

    def forward(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> tuple[Tensor, Tensor]:
        """(label-smoothed loss, nll) per target token, float32 [B, T], exactly 0 at pads."""
        h = self.decoder_hidden(self.encode(src), tgt_in)
        # The vocabulary projection is the costliest op of a small model: run it on real tokens only.
        rows = tgt_out.reshape(-1).ne(self.pad_id).nonzero().squeeze(1)
        lprobs = self.logprobs(h.reshape(-1, h.shape[-1]).index_select(0, rows))
        target = tgt_out.reshape(-1).index_select(0, rows)
        nll = -lprobs.gather(1, target[:, None]).squeeze(1)
        zeros = lprobs.new_zeros(tgt_out.numel())
        nll_tok = zeros.index_copy(0, rows, nll).view(tgt_out.shape)
        eps = self.arch.label_smoothing
        if eps == 0:
            return nll_tok, nll_tok
        # sum, not mean: its backward is a broadcast, where mean's writes a [N, V] tensor.
        loss = (1 - eps) * nll - (eps / lprobs.shape[1]) * lprobs.sum(-1)
        return zeros.index_copy(0, rows, loss).view(tgt_out.shape), nll_tok

    def init_cache(self, enc: EncoderOut, max_steps: int, beam: int = 1) -> DecoderCache:
        """A cache for up to `max_steps` decoder positions; each row of `enc` is repeated `beam` times."""
        ckv = self._cross_kv(enc.memory)  # before the beam expansion: `beam` times fewer FLOPs
        keep = ~enc.src_pad_mask[:, None, None, :]
        if beam > 1:
            rows = torch.arange(ckv.shape[0], device=ckv.device).repeat_interleave(beam)
            ckv, keep = ckv.index_select(0, rows), keep.index_select(0, rows)
        n, _, layers, _, heads, dh = ckv.shape
        store = ckv.new_empty(2, max_steps * layers * n * 2 * heads * dh)
        self_kv = store[0].view(max_steps, layers, n, 2, heads, dh)
        return DecoderCache(self_kv=self_kv, spare=store[1], cross_kv=ckv, src_keep=keep)

    def decode_step(self, tokens: Tensor, cache: DecoderCache) -> Tensor:
        """Feed `tokens` [N] at position `cache.length`; returns float32 log-probs [N, V]."""
        t = cache.length
        if t >= cache.self_kv.shape[0]:
            raise ValueError(f"decoder cache holds {cache.self_kv.shape[0]} positions; step {t} is past it")
        e = self.embed(tokens)
        x = torch.add(self.positions[t].to(e.dtype), e, alpha=self.scale)
        x = F.dropout(x, self.arch.dropout, self.training)
        for i, layer in enumerate(self.decoder):
            x = layer.step(x, cache.self_kv[:, i], t, cache.cross_kv[:, :, i], cache.src_keep)
        cache.length = t + 1
        return self.logprobs(self.dec_norm(x))

    def reorder(self, cache: DecoderCache, index: Tensor, same_sources: bool = False) -> None:
        """Keep rows `index` of the cache, in place (rows may repeat, drop or move).

        `same_sources=True` promises every row keeps its source sentence (a beam shuffle), so the
        cross-attention K/V, identical across a sentence's beams, are left alone.
        """
        steps, layers, _, two, heads, dh = cache.self_kv.shape
        n = index.numel()
        size = steps * layers * n * two * heads * dh
        if cache.spare.numel() < size:
            cache.spare = cache.self_kv.new_empty(size)
        new = cache.spare[:size].view(steps, layers, n, two, heads, dh)
        torch.index_select(cache.self_kv[: cache.length], 2, index, out=new[: cache.length])
        cache.spare, cache.self_kv = cache.self_kv.view(-1), new
        if not same_sources:
            cache.cross_kv = cache.cross_kv.index_select(0, index)
            cache.src_keep = cache.src_keep.index_select(0, index)
