"""Our weights in `transformers`' Pegasus layout: a model `AutoModelForSeq2SeqLM` loads as it is.

Why Pegasus and not M2M100, the closer relative: both are pre-LN encoder-decoders with tied,
scaled embeddings and no embedding LayerNorm, but M2M100 rebuilds its sinusoidal table at load
(a non-persistent buffer) and numbers the first token padding_idx + 1, so with our pad id 0 its
first position would be our second (and CTranslate2 reads it from row 2). Pegasus stores its
position table as a weight and numbers positions from 0, as we do: it holds our table exactly.
"""

from __future__ import annotations

import torch
from transformers import PegasusConfig, PegasusForConditionalGeneration

from pipeline.model.transformer import Seq2SeqTransformer


def pegasus_config(model: Seq2SeqTransformer, pad_id: int, bos_id: int, eos_id: int, unk_id: int) -> PegasusConfig:
    a = model.arch
    return PegasusConfig(
        vocab_size=model.vocab_size, d_model=a.d_model, encoder_layers=a.encoder_layers,
        decoder_layers=a.decoder_layers, encoder_attention_heads=a.heads, decoder_attention_heads=a.heads,
        encoder_ffn_dim=a.ffn_dim, decoder_ffn_dim=a.ffn_dim, activation_function="relu",
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
        decoder_layerdrop=0.0, scale_embedding=True, max_position_embeddings=a.max_positions,
        pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id, unk_token_id=unk_id,
        # Our decoder starts from bos; the target language is the tag at the head of the source,
        # so no token is forced.
        decoder_start_token_id=bos_id, forced_eos_token_id=None, tie_word_embeddings=True,
        # CTranslate2's Bart-family converter reads these two.
        normalize_before=True, normalize_embedding=False,
    )


def to_pegasus(model: Seq2SeqTransformer, config: PegasusConfig) -> PegasusForConditionalGeneration:
    """A Pegasus model holding `model`'s float32 weights (dropout off, eval mode)."""
    hf = PegasusForConditionalGeneration(config).eval()
    m, d = hf.model, model.arch.d_model

    def put(linear: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)

    def put_attn(attn: torch.nn.Module, w: torch.Tensor, b: torch.Tensor) -> None:  # w, b: fused q, k, v
        for proj, wi, bi in zip((attn.q_proj, attn.k_proj, attn.v_proj), w.split(d), b.split(d)):
            put(proj, wi, bi)

    def put_norm(hf_norm: torch.nn.Module, norm: torch.nn.Module) -> None:
        put(hf_norm, norm.weight, norm.bias)

    with torch.no_grad():
        m.shared.weight.copy_(model.embed.weight)
        for stack in (m.encoder, m.decoder):
            stack.embed_positions.weight.copy_(model.positions[: stack.embed_positions.weight.shape[0]])
        for hl, ol in zip(m.encoder.layers, model.encoder):
            put_attn(hl.self_attn, ol.attn.qkv.weight, ol.attn.qkv.bias)
            put(hl.self_attn.out_proj, ol.attn.out.weight, ol.attn.out.bias)
            put_norm(hl.self_attn_layer_norm, ol.ln1)
            put_norm(hl.final_layer_norm, ol.ln2)
            put(hl.fc1, ol.ffn.fc1.weight, ol.ffn.fc1.bias)
            put(hl.fc2, ol.ffn.fc2.weight, ol.ffn.fc2.bias)
        cross_w, cross_b = model.cross_kv.weight.split(2 * d), model.cross_kv.bias.split(2 * d)
        for i, (hl, ol) in enumerate(zip(m.decoder.layers, model.decoder)):
            put_attn(hl.self_attn, ol.self_attn.qkv.weight, ol.self_attn.qkv.bias)
            put(hl.self_attn.out_proj, ol.self_attn.out.weight, ol.self_attn.out.bias)
            put(hl.encoder_attn.q_proj, ol.cross_q.weight, ol.cross_q.bias)
            (kw, vw), (kb, vb) = cross_w[i].split(d), cross_b[i].split(d)
            put(hl.encoder_attn.k_proj, kw, kb)
            put(hl.encoder_attn.v_proj, vw, vb)
            put(hl.encoder_attn.out_proj, ol.cross_out.weight, ol.cross_out.bias)
            put_norm(hl.self_attn_layer_norm, ol.ln1)
            put_norm(hl.encoder_attn_layer_norm, ol.ln2)
            put_norm(hl.final_layer_norm, ol.ln3)
            put(hl.fc1, ol.ffn.fc1.weight, ol.ffn.fc1.bias)
            put(hl.fc2, ol.ffn.fc2.weight, ol.ffn.fc2.bias)
        put_norm(m.encoder.layer_norm, model.enc_norm)
        put_norm(m.decoder.layer_norm, model.dec_norm)
        hf.final_logits_bias.zero_()
    return hf
