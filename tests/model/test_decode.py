from __future__ import annotations

import itertools

import pytest
import torch

from pipeline.model.decode import beam_search, greedy_search, max_lengths, top_k
from pipeline.model.transformer import ModelArch, Seq2SeqTransformer

PAD, BOS, EOS = 1, 2, 3


def small(vocab: int = 50, seed: int = 0) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    arch = ModelArch(d_model=32, encoder_layers=2, decoder_layers=2, heads=4, ffn_dim=64, max_positions=64)
    model = Seq2SeqTransformer(arch, vocab, PAD)
    with torch.no_grad():
        # Left as initialised, a tied random model mostly repeats a token and never ends: random
        # output gains and a larger eos embedding give varied tokens and lengths.
        torch.nn.init.normal_(model.dec_norm.weight, 0.0, 2.0)
        model.embed.weight[EOS] *= 3
    return model


def batch(lengths: list[int], seed: int, vocab: int = 50) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = torch.full((len(lengths), max(lengths)), PAD)
    for i, n in enumerate(lengths):
        out[i, :n] = torch.randint(4, vocab, (n,), generator=g)
    return out


def score(model: Seq2SeqTransformer, src: torch.Tensor, hyp: list[int], length_penalty: float) -> float:
    """sum log p(hyp + eos) / (len(hyp) + 1) ** length_penalty, by a full forward."""
    with torch.no_grad():
        tgt = torch.tensor([[BOS, *hyp]])
        lp = model.logprobs(model.decoder_hidden(model.encode(src[None]), tgt))[0]
        total = lp.gather(1, torch.tensor([*hyp, EOS])[:, None]).sum().item()
    return total / (len(hyp) + 1) ** length_penalty


def naive_greedy(model: Seq2SeqTransformer, src: torch.Tensor, limit: int) -> list[int]:
    """Re-runs the whole decoder on the prefix for every token."""
    with torch.no_grad():
        enc = model.encode(src[None])
        hyp: list[int] = []
        while len(hyp) < limit:
            lp = model.logprobs(model.decoder_hidden(enc, torch.tensor([[BOS, *hyp]])))[0, -1]
            lp[[PAD, BOS]] = float("-inf")
            tok = int(lp.argmax())
            if tok == EOS:
                break
            hyp.append(tok)
        return hyp


@pytest.mark.parametrize("k", [1, 3, 8])
def test_top_k_matches_torch(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    x = torch.randn(6, 64 * 40, generator=g)
    x[0, :-7] = float("-inf")  # a row with fewer finite entries than most blocks
    x[1, 64 * 39 :] += 10.0  # the winners all in one block
    x[2].mul_(-1).abs_()
    values, indices = top_k(x, k)
    expected = x.topk(k, dim=1)
    assert torch.equal(values, expected.values)
    finite = values.isfinite()
    assert torch.equal(indices[finite], expected.indices[finite])
    assert torch.equal(x.gather(1, indices), values)
    odd = torch.randn(3, 1000, generator=g)  # not a multiple of the block: plain topk
    assert torch.equal(top_k(odd, k)[1], odd.topk(k, dim=1).indices)


def test_max_lengths() -> None:
    got = max_lengths(torch.tensor([0, 3, 10, 100]), a=1.5, b=10, cap=64)
    assert got.tolist() == [10, 14, 25, 64]
    # 0.7 * 10 is 6.99999988 in float32; Python's floor(0.7 * 10 + 0) is 7.
    assert max_lengths(torch.tensor([10]), a=0.7, b=0, cap=100).tolist() == [7]
    assert max_lengths(torch.tensor([2]), a=1.0, b=-5, cap=100).tolist() == [0]


def test_greedy_matches_naive_loop_and_limits() -> None:
    model = small(seed=4).eval()
    src = batch([7, 3, 9, 5, 1, 6], seed=1)
    limits = torch.tensor([12, 4, 20, 0, 9, 15])
    hyps = greedy_search(model, src, BOS, EOS, limits)
    lengths = src.ne(PAD).sum(1)
    for i, hyp in enumerate(hyps):
        assert hyp == naive_greedy(model, src[i, : lengths[i]], int(limits[i]))
        assert len(hyp) <= limits[i] and not {PAD, BOS, EOS} & set(hyp)
    assert hyps[3] == []
    assert len({len(h) for h in hyps}) > 2  # sentences did end at different steps
    assert any(len(h) < int(lim) for h, lim in zip(hyps, limits))  # some ended with eos


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_padding_invariance(search: str) -> None:
    model = small(seed=9)
    src = batch([4, 11, 8, 13], seed=2)
    limits = torch.tensor([10, 18, 14, 20])

    def run(s: torch.Tensor, m: torch.Tensor) -> list[list[int]]:
        if search == "greedy":
            return greedy_search(model, s, BOS, EOS, m)
        return beam_search(model, s, BOS, EOS, beam=4, length_penalty=1.0, max_len=m)

    together = run(src, limits)
    for i in range(4):
        n = int(src[i].ne(PAD).sum())
        assert run(src[i : i + 1, :n], limits[i : i + 1]) == [together[i]]
    assert model.training  # the previous mode is restored


def test_beam_one_is_greedy() -> None:
    model = small(seed=6)
    src = batch([5, 9, 2, 7, 12, 4, 8, 6], seed=3)
    limits = torch.tensor([8, 14, 5, 11, 17, 7, 0, 10])
    greedy = greedy_search(model, src, BOS, EOS, limits)
    for lp in (0.0, 1.0):
        assert beam_search(model, src, BOS, EOS, beam=1, length_penalty=lp, max_len=limits) == greedy


def test_beam_scores_at_least_greedy() -> None:
    model = small(seed=4).eval()
    src = batch([5, 9, 3, 7, 12, 4, 8, 6, 10, 2], seed=4)
    for lp in (0.0, 1.0):
        greedy = greedy_search(model, src, BOS, EOS, 16)
        beams = beam_search(model, src, BOS, EOS, beam=5, length_penalty=lp, max_len=16)
        better = 0
        for i, (g, b) in enumerate(zip(greedy, beams)):
            n = int(src[i].ne(PAD).sum())
            sg, sb = score(model, src[i, :n], g, lp), score(model, src[i, :n], b, lp)
            assert sb >= sg - 1e-5
            better += sb > sg + 1e-5
            assert len(b) <= 16 and not {PAD, BOS, EOS} & set(b)
        assert better > 0  # the search is doing something beyond greedy


def test_wide_beam_is_exact_without_length_penalty() -> None:
    # 4 usable tokens, at most 3 of them: 85 hypotheses. A 96-wide beam keeps every prefix alive and
    # every eos candidate in its top `beam`, and without a length penalty its stopping test is exact.
    vocab, limit = 7, 3
    model = small(vocab=vocab, seed=3).eval()
    src = batch([4, 6, 3], seed=5, vocab=vocab)
    tokens = [t for t in range(vocab) if t not in (PAD, BOS, EOS)]
    hyps = [list(h) for k in range(limit + 1) for h in itertools.product(tokens, repeat=k)]
    found = beam_search(model, src, BOS, EOS, beam=96, length_penalty=0.0, max_len=limit)
    greedy = greedy_search(model, src, BOS, EOS, limit)
    for i in range(3):
        n = int(src[i].ne(PAD).sum())
        scores = [score(model, src[i, :n], h, 0.0) for h in hyps]
        assert found[i] == hyps[max(range(len(hyps)), key=scores.__getitem__)]
    assert found != greedy  # the optimum is not simply the greedy path


def test_length_limit_forces_eos() -> None:
    model = small(seed=6)
    with torch.no_grad():
        model.embed.weight[EOS] = 0  # eos is never the argmax: every hypothesis hits its limit
    src = batch([5, 8, 3], seed=6)
    limits = torch.tensor([4, 7, 0])
    for hyps in (
        greedy_search(model, src, BOS, EOS, limits),
        beam_search(model, src, BOS, EOS, beam=3, length_penalty=1.0, max_len=limits),
    ):
        assert [len(h) for h in hyps] == [4, 7, 0]
    assert [len(h) for h in greedy_search(model, src, BOS, EOS, 1000)] == [63] * 3  # max_positions - 1


def test_min_len_holds_back_eos():
    torch.manual_seed(3)
    arch = ModelArch(d_model=32, encoder_layers=1, decoder_layers=1, heads=4, ffn_dim=64, dropout=0.0)
    model = Seq2SeqTransformer(arch, 20, 0)
    step = model.decode_step

    def eos_first(tokens, cache):  # make eos the best token at every step
        lp = step(tokens, cache)
        lp[:, 3] = lp.max(-1).values + 1.0
        return lp

    model.decode_step = eos_first
    src = torch.randint(4, 20, (3, 6))
    assert all(len(h) == 0 for h in greedy_search(model, src, 2, 3, 12))
    for hyp in greedy_search(model, src, 2, 3, 12, min_len=12) + beam_search(model, src, 2, 3, 3, 1.0, 12, min_len=12):
        assert len(hyp) == 12
    assert all(len(h) == 5 for h in beam_search(model, src, 2, 3, 3, 1.0, 5, min_len=12))  # the limit wins
