from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.config import PRESETS, ModelArch, ModelConfig, resolve_arch
from pipeline.model.transformer import Seq2SeqTransformer

from toy_batches import PAD, VOCAB, batch, teacher_forcing


def small(**kw: float) -> Seq2SeqTransformer:
    torch.manual_seed(0)
    arch = ModelArch(d_model=32, encoder_layers=2, decoder_layers=2, heads=4, ffn_dim=64, dropout=0.0)
    return Seq2SeqTransformer(dataclasses.replace(arch, max_positions=64, **kw), VOCAB, PAD)


def test_presets_and_overrides() -> None:
    assert resolve_arch(ModelConfig(preset="tiny")) == dataclasses.replace(PRESETS["tiny"], dropout=0.1)
    base = resolve_arch(ModelConfig(preset="base"))
    assert (base.d_model, base.encoder_layers, base.decoder_layers, base.heads, base.ffn_dim) == (
        512,
        6,
        6,
        8,
        2048,
    )
    big = resolve_arch(ModelConfig(preset="big"))
    assert (big.d_model, big.heads, big.ffn_dim) == (1024, 16, 4096)
    arch = resolve_arch(
        ModelConfig(
            preset="base", d_model=256, decoder_layers=2, dropout=0.3, label_smoothing=0.0, max_positions=200
        )
    )
    assert (arch.d_model, arch.encoder_layers, arch.decoder_layers, arch.heads) == (256, 6, 2, 8)
    assert (arch.dropout, arch.label_smoothing, arch.max_positions) == (0.3, 0.0, 200)
    assert ModelConfig(d_model=100, heads=3).check("model") == [
        ("model.heads", "d_model 100 is not divisible by 3 heads")
    ]


def test_tiny_parameter_count() -> None:
    model = Seq2SeqTransformer(resolve_arch(ModelConfig(preset="tiny")), 8000, PAD)
    assert 7.3e6 < model.num_parameters() < 7.8e6
    # Tied: the output projection is the embedding, so there is exactly one vocab x d matrix.
    assert sum(p.numel() for p in model.parameters() if p.shape[0] == 8000) == 8000 * 256


def test_init() -> None:
    model = small()
    assert model.embed.weight[PAD].abs().sum() == 0
    assert model.embed.weight.std().item() == pytest.approx(32**-0.5, rel=0.2)


def test_loss_shapes_pads_and_smoothing() -> None:
    model = small(label_smoothing=0.1).eval()
    src = batch([7, 3, 5], seed=1)
    tgt_in, tgt_out = teacher_forcing([6, 2, 4], seed=2)
    loss, nll = model(src, tgt_in, tgt_out)
    assert loss.shape == nll.shape == tgt_out.shape and loss.dtype == nll.dtype == torch.float32
    pad = tgt_out.eq(PAD)
    assert pad.any() and (loss[pad] == 0).all() and (nll[pad] == 0).all()
    assert (loss[~pad] > 0).all() and (nll[~pad] > 0).all()
    # fairseq's form, from the full log-probs.
    with torch.no_grad():
        lp = model.logprobs(model.decoder_hidden(model.encode(src), tgt_in))
    ref_nll = -lp.gather(2, tgt_out[..., None]).squeeze(2)
    ref = (0.9 * ref_nll - 0.1 * lp.mean(-1)).masked_fill(pad, 0)
    torch.testing.assert_close(nll, ref_nll.masked_fill(pad, 0))
    torch.testing.assert_close(loss, ref)

    plain = small(label_smoothing=0.0).eval()
    loss0, nll0 = plain(src, tgt_in, tgt_out)
    assert torch.equal(loss0, nll0)
    torch.testing.assert_close(nll0, nll)  # same seed, same weights


def test_causality() -> None:
    model = small().eval()
    src = batch([6, 6], seed=3)
    tgt_in, tgt_out = teacher_forcing([8, 8], seed=4)
    with torch.no_grad():
        enc = model.encode(src)
        lp = model.logprobs(model.decoder_hidden(enc, tgt_in))
        for k in (1, 4, 7):
            changed = tgt_in.clone()
            changed[:, k] = (changed[:, k] + 7) % (VOCAB - 4) + 4
            lp2 = model.logprobs(model.decoder_hidden(enc, changed))
            torch.testing.assert_close(lp2[:, :k], lp[:, :k], rtol=0, atol=1e-6)
            assert not torch.allclose(lp2[:, k:], lp[:, k:])


def test_source_padding_invariance() -> None:
    model = small().eval()
    src = batch([9, 4], seed=5)
    tgt_in, tgt_out = teacher_forcing([5, 5], seed=6)
    with torch.no_grad():
        loss, _ = model(src, tgt_in, tgt_out)
        alone, _ = model(src[1:, :4], tgt_in[1:], tgt_out[1:])
        enc = model.encode(src)
        enc_alone = model.encode(src[1:, :4])
    torch.testing.assert_close(loss[1:], alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(enc.memory[1:, :4], enc_alone.memory, rtol=0, atol=1e-5)
    assert enc.src_pad_mask.tolist() == [[False] * 9, [False] * 4 + [True] * 5]


def test_incremental_decoding_matches_full_forward() -> None:
    model = small().eval()
    src = batch([7, 2, 5], seed=7)
    tgt_in, _ = teacher_forcing([9, 9, 9], seed=8)
    with torch.no_grad():
        enc = model.encode(src)
        full = model.logprobs(model.decoder_hidden(enc, tgt_in))
        cache = model.init_cache(enc, max_steps=tgt_in.shape[1])
        for t in range(tgt_in.shape[1]):
            step = model.decode_step(tgt_in[:, t], cache)
            assert step.dtype == torch.float32
            torch.testing.assert_close(step, full[:, t], rtol=0, atol=1e-5)
        assert cache.length == tgt_in.shape[1]
        with pytest.raises(ValueError):
            model.decode_step(tgt_in[:, 0], cache)


@pytest.mark.parametrize("drop", [False, True])
def test_reorder_follows_rows(drop: bool) -> None:
    model = small().eval()
    src = batch([6, 3], seed=9)
    beam = 3
    pool = torch.randint(4, VOCAB, (2 * beam, 7), generator=torch.Generator().manual_seed(10))
    # Beams shuffle within each sentence at every step, so that the hypotheses' paths cross.
    shuffles = [torch.tensor([[2, 0, 0], [1, 2, 1]]), torch.tensor([[1, 1, 2], [0, 0, 2]])]
    with torch.no_grad():
        enc = model.encode(src)
        cache = model.init_cache(enc, max_steps=7, beam=beam)
        history = pool[:, :0]
        for t in range(3):
            model.decode_step(pool[:, t], cache)
            history = torch.cat([history, pool[:, t : t + 1]], 1)
            if t < len(shuffles):
                model.reorder(cache, shuffles[t])
                history = history[(shuffles[t] + torch.arange(2)[:, None] * beam).view(-1)]
        kept = torch.tensor([1]) if drop else torch.arange(2)  # dropping sentence 0
        beams = torch.tensor([[1, 2, 0]]) if drop else torch.tensor([[2, 2, 0], [1, 0, 0]])
        model.reorder(cache, beams, kept if drop else None)
        rows = (beams + kept[:, None] * beam).view(-1)
        prefixes = torch.cat([history[rows], pool[: rows.numel(), 3:]], 1)
        full = model.logprobs(model.decoder_hidden(enc.index_select(rows // beam), prefixes))
        for t in range(3, 7):
            step = model.decode_step(prefixes[:, t], cache)
            torch.testing.assert_close(step, full[:, t], rtol=0, atol=1e-5)


def test_bf16_autocast_keeps_float32_losses() -> None:
    model = small()
    src = batch([5, 4], seed=11)
    tgt_in, tgt_out = teacher_forcing([6, 3], seed=12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, nll = model(src, tgt_in, tgt_out)
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    ref, _ = model(src, tgt_in, tgt_out)
    torch.testing.assert_close(loss, ref, rtol=0.05, atol=0.05)
    loss.sum().backward()
    assert model.embed.weight.grad is not None and torch.isfinite(model.embed.weight.grad).all()


def test_dropout_only_in_training() -> None:
    model = small(dropout=0.3, attention_dropout=0.1, activation_dropout=0.1)
    src = batch([5], seed=13)
    tgt_in, tgt_out = teacher_forcing([5], seed=14)
    a, _ = model(src, tgt_in, tgt_out)
    b, _ = model(src, tgt_in, tgt_out)
    assert not torch.equal(a, b)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(src, tgt_in, tgt_out)[0], model(src, tgt_in, tgt_out)[0])


def test_overfits_one_batch() -> None:
    model = small(label_smoothing=0.0)
    src = batch([8, 6, 7, 5], seed=15)
    tgt_in, tgt_out = teacher_forcing([7, 8, 4, 6], seed=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    tokens = tgt_out.ne(PAD).sum()
    first = None
    for _ in range(100):
        loss, nll = model(src, tgt_in, tgt_out)
        mean = loss.sum() / tokens
        first = mean.item() if first is None else first
        opt.zero_grad()
        mean.backward()
        opt.step()
    assert first > 3.0
    assert mean.item() < 0.1
