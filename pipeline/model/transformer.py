"""A pre-LN Transformer encoder-decoder in plain torch, with a preallocated KV cache for decoding."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pipeline.config import ModelArch, RecipeConfig, resolve_arch
from pipeline.model.layers import DecoderLayer, EncoderLayer, Packing, dropout, xavier_blocks
from pipeline.model.loss import smoothed_nll, smoothed_nll_kd


class EncoderOut(NamedTuple):
    memory: Tensor  # [B, S, D]
    src_pad_mask: Tensor  # [B, S] bool, True at pads
    packed: Tensor | None = None  # memory's real rows [N, D], as `packing` lists them
    packing: Packing | None = None

    def index_select(self, index: Tensor) -> EncoderOut:
        return EncoderOut(self.memory.index_select(0, index), self.src_pad_mask.index_select(0, index))


@dataclass
class DecoderCache:
    """Everything incremental decoding needs, for n sentences of `beam` hypotheses each.

    Beam search never moves the self-attention cache: each step writes one slot per beam, and
    `paths` records which slot each live hypothesis passed through at every step, so a beam
    reorder rewrites a few integers where it used to copy the whole cache. Attention reads all of a
    sentence's slots at once and masks those off the hypothesis' path. The cross-attention K/V
    are stored once per sentence, not once per beam.
    """

    self_kv: Tensor  # [L, 2, n, H, max_steps * beam, Dh]; slot t * beam + b is beam b's step t
    paths: Tensor  # [n, beam, max_steps] long: the beam whose slot each hypothesis used per step
    cross_kv: Tensor  # [L, 2, n, H, S, Dh], contiguous
    src_pad: Tensor  # [n, 1, 1, S] bool, True at source pads
    out_proj: Tensor  # [D, V]: the output embedding, transposed
    beam: int = 1
    length: int = 0


def sinusoids(length: int, dim: int) -> Tensor:
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(10000.0) / max(half - 1, 1)))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * freq[None]
    table = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(table, (0, dim - 2 * half))


class Seq2SeqTransformer(nn.Module):
    def __init__(self, arch: ModelArch, vocab_size: int, pad_id: int,
                 activation_checkpointing: bool = False) -> None:
        super().__init__()
        if arch.d_model % arch.heads:
            raise ValueError(f"d_model {arch.d_model} is not divisible by {arch.heads} heads")
        self.arch, self.vocab_size, self.pad_id = arch, vocab_size, pad_id
        self.activation_checkpointing = activation_checkpointing
        d = arch.d_model
        self.embed = nn.Embedding(vocab_size, d, padding_idx=pad_id)
        nn.init.normal_(self.embed.weight, 0.0, d**-0.5)
        with torch.no_grad():
            self.embed.weight[pad_id].zero_()
        self.scale = math.sqrt(d)
        self.register_buffer("positions", sinusoids(arch.max_positions, d), persistent=False)
        a = (d, arch.heads, arch.ffn_dim, arch.dropout, arch.attention_dropout, arch.activation_dropout)
        self.encoder = nn.ModuleList(EncoderLayer(*a) for _ in range(arch.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(*a) for _ in range(arch.decoder_layers))
        self.cross_kv = nn.Linear(d, arch.decoder_layers * 2 * d)
        xavier_blocks(self.cross_kv, d)
        self.enc_norm, self.dec_norm = nn.LayerNorm(d), nn.LayerNorm(d)

    @property
    def max_positions(self) -> int:
        return self.arch.max_positions

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _embed(self, tokens: Tensor, packing: Packing) -> Tensor:
        """Scaled embeddings plus positions of the real tokens, packed [N, D]."""
        if packing.t > self.arch.max_positions:
            raise ValueError(f"sequence of {packing.t} tokens exceeds max_positions={self.arch.max_positions}")
        e = self.embed(tokens.reshape(-1).index_select(0, packing.rows))
        # DeepSpeed's bf16/fp16 modes cast parameters but keep buffers: match the embedding's dtype.
        pos = self.positions.index_select(0, packing.positions()).to(e.dtype)
        return dropout(torch.add(pos, e, alpha=self.scale), self.arch.dropout, self.training)

    def _layer(self, layer: nn.Module, *args: object) -> Tensor:
        """One encoder or decoder layer of the training forward. With activation checkpointing its
        activations are not kept but recomputed in the backward: one extra forward per layer for
        not holding every layer's intermediates at once (`big` models, long batches). The RNG state
        is restored for the recomputation, so its dropout masks, and the gradients, are the same.
        Eval mode and no-grad forwards (decoding, scoring) run the layer as it is."""
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False, preserve_rng_state=True)
        return layer(*args)

    def _cross_kv(self, enc: EncoderOut) -> Tensor:
        b, s, _ = enc.memory.shape
        if enc.packed is not None and enc.packing is not None:
            kv = enc.packing.pad(self.cross_kv(enc.packed))
        else:
            kv = self.cross_kv(enc.memory)
        return kv.view(b, s, len(self.decoder), 2, self.arch.heads, -1)

    def encode(self, src: Tensor) -> EncoderOut:
        pad = src.eq(self.pad_id)
        keep = ~pad[:, None, None, :]
        packing = Packing(src, self.pad_id)
        x = self._embed(src, packing)
        for layer in self.encoder:
            x = self._layer(layer, x, packing, keep)
        x = self.enc_norm(x)
        return EncoderOut(packing.pad(x), pad, x, packing)

    def _decode(self, enc: EncoderOut, tgt_in: Tensor, packing: Packing) -> Tensor:
        # unbind: its backward stacks the layers' gradients once, where indexing would zero-fill
        # a full-size gradient per layer.
        ckvs = self._cross_kv(enc).unbind(2)
        keep = ~enc.src_pad_mask[:, None, None, :]
        x = self._embed(tgt_in, packing)
        for layer, ckv in zip(self.decoder, ckvs):
            x = self._layer(layer, x, packing, ckv, keep)
        return self.dec_norm(x)

    def decoder_hidden(self, enc: EncoderOut, tgt_in: Tensor) -> Tensor:
        """Final-LayerNorm decoder states [B, T, D] for teacher-forced, right-padded `tgt_in` (0 at pads)."""
        packing = Packing(tgt_in, self.pad_id)
        return packing.pad(self._decode(enc, tgt_in, packing))

    def logprobs(self, h: Tensor, out_proj: Tensor | None = None) -> Tensor:
        """Float32 log-probs from the decoder states; `out_proj` is the embedding as [D, V] when the
        caller holds such a copy (decoding, `DecoderCache.out_proj`)."""
        # float32 log_softmax straight from (possibly bf16) logits, without a separate upcast copy.
        logits = F.linear(h, self.embed.weight) if out_proj is None else h @ out_proj
        return torch.log_softmax(logits, -1, dtype=torch.float32)

    def _target_states(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> tuple[Tensor, Tensor]:
        """Decoder states [N, D] of the N real target tokens (row-major order of tgt_out), and their rows."""
        packing = Packing(tgt_in, self.pad_id)
        h = self._decode(self.encode(src), tgt_in, packing)
        rows = tgt_out.reshape(-1).ne(self.pad_id).nonzero().squeeze(1)
        if not torch.equal(rows, packing.rows):  # targets not aligned with inputs: score tgt_out's tokens
            h = packing.pad(h).view(-1, h.shape[-1]).index_select(0, rows)
        return h, rows

    def target_logits(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> Tensor:
        """Logits [N, V] of the N real target tokens, in the order `forward` scores them (a teacher's)."""
        h, _ = self._target_states(src, tgt_in, tgt_out)
        return F.linear(h, self.embed.weight)

    def forward(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor, teacher: Tensor | None = None
                ) -> tuple[Tensor, ...]:
        """(label-smoothed loss, nll) per target token, float32 [B, T], exactly 0 at pads; with
        `teacher` (a distribution [N, V] per real target token, as from `target_logits`) also the
        cross-entropy against it, per token."""
        h, rows = self._target_states(src, tgt_in, tgt_out)
        # The vocabulary projection is the costliest op of a small model: it runs on real tokens only.
        target = tgt_out.reshape(-1).index_select(0, rows)
        logits = F.linear(h, self.embed.weight)
        if teacher is None:
            outs: tuple[Tensor, ...] = smoothed_nll(logits, target, self.arch.label_smoothing)
        else:
            outs = smoothed_nll_kd(logits, target, self.arch.label_smoothing, teacher)
        zeros = outs[0].new_zeros(tgt_out.numel())
        return tuple(zeros.index_copy(0, rows, x).view(tgt_out.shape) for x in outs)

    def init_cache(self, enc: EncoderOut, max_steps: int, beam: int = 1) -> DecoderCache:
        """A cache for up to `max_steps` decoder positions of `beam` hypotheses per row of `enc`."""
        ckv = self._cross_kv(enc).permute(2, 3, 0, 4, 1, 5).contiguous()  # [L, 2, n, H, S, Dh]
        layers, _, n, heads, _, dh = ckv.shape
        self_kv = ckv.new_empty(layers, 2, n, heads, max_steps * beam, dh)
        paths = torch.empty(n, beam, max_steps, dtype=torch.long, device=ckv.device)
        # CPU BLAS multiplies by a contiguous [D, V] matrix about 20% faster than by a transposed [V, D] one.
        out_proj = self.embed.weight.t()
        if out_proj.device.type == "cpu":
            out_proj = out_proj.contiguous()
        return DecoderCache(self_kv, paths, ckv, enc.src_pad_mask[:, None, None, :], out_proj, beam)

    def decode_step(self, tokens: Tensor, cache: DecoderCache) -> Tensor:
        """Feed `tokens` [n * beam], beam-major within each sentence, at position `cache.length`;
        returns float32 log-probs [n * beam, V]."""
        t, beam = cache.length, cache.beam
        if t >= cache.paths.shape[2]:
            raise ValueError(f"decoder cache holds {cache.paths.shape[2]} positions; step {t} is past it")
        hide = None
        if beam > 1:
            ids = torch.arange(beam, device=tokens.device)
            cache.paths[:, :, t] = ids
            hide = cache.paths[:, :, : t + 1, None].ne(ids).view(-1, 1, beam, (t + 1) * beam)
        e = self.embed(tokens)
        x = torch.add(self.positions[t].to(e.dtype), e, alpha=self.scale)
        for i, layer in enumerate(self.decoder):
            x = layer.step(x, cache.self_kv[i], t, hide, cache.cross_kv[i], cache.src_pad)
        cache.length = t + 1
        return self.logprobs(self.dec_norm(x), cache.out_proj)

    def reorder(self, cache: DecoderCache, beams: Tensor | None = None, sentences: Tensor | None = None) -> None:
        """Continue hypothesis `beams[i, b]` of sentence `sentences[i]` as row (i, b), in place.

        beams [n', beam] indexes within each sentence's beams (None: each row continues itself);
        sentences [n'] the sentences kept, in their new order (None: all of them, as they are).
        """
        if sentences is not None:
            filled = cache.length * cache.beam
            kv = cache.self_kv
            new = kv.new_empty(kv.shape[:2] + (sentences.numel(),) + kv.shape[3:])
            new[..., :filled, :] = kv[..., :filled, :].index_select(2, sentences)
            cache.self_kv = new
            cache.cross_kv = cache.cross_kv.index_select(2, sentences)
            cache.src_pad = cache.src_pad.index_select(0, sentences)
            cache.paths = cache.paths.index_select(0, sentences)
        if beams is not None and cache.beam > 1:
            index = beams[:, :, None].expand(-1, -1, cache.paths.shape[2])
            cache.paths = cache.paths.gather(1, index)


def build_model(recipe: RecipeConfig, vocab_size: int, pad_id: int) -> Seq2SeqTransformer:
    return Seq2SeqTransformer(resolve_arch(recipe.model), vocab_size, pad_id,
                              activation_checkpointing=recipe.model.activation_checkpointing)
