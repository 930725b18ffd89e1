"""Batched decoding speed against Hugging Face `generate`, with the same weights and the same outputs.

    python benchmarks/decoding.py        # needs `pip install transformers`

Batch 32, exactly 64 new tokens and eos (min length 64 on both sides, eos forced at the 65th
token), beam 4 and greedy, 2 threads. The peer is `generate` on two `transformers` models of our
shape: M2M100, a pre-LN encoder-decoder like ours, loaded with our weights (so that the outputs
must agree token for token, which this script counts), and MarianMT (post-LN, random weights: the
same work per step; the issue's anchor). Banned tokens match (pad and bos). Timings alternate
between the contenders, `--reps` rounds, and report the median. Writes
benchmarks/results/decoding.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline.config import ModelConfig
from pipeline.model.decode import beam_search, greedy_search
from pipeline.model.transformer import Seq2SeqTransformer, resolve_arch

from throughput import marian  # noqa: E402  (same directory)

PAD, BOS, EOS = 0, 2, 3


def sources(batch: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, 24, (batch,), generator=g)
    src = torch.zeros(batch, int(lengths.max()) + 2, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        src[i, : n + 1] = torch.randint(4, vocab, (n + 1,), generator=g)
        src[i, n + 1] = EOS
    return src


def m2m100_with_weights_of(ours: Seq2SeqTransformer):
    """transformers' M2M100 (pre-LN, sinusoidal positions, tied embeddings) holding `ours`' weights."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    a, d = ours.arch, ours.arch.d_model
    cfg = M2M100Config(vocab_size=ours.vocab_size, d_model=d, encoder_layers=a.encoder_layers,
                       decoder_layers=a.decoder_layers, encoder_attention_heads=a.heads,
                       decoder_attention_heads=a.heads, encoder_ffn_dim=a.ffn_dim, decoder_ffn_dim=a.ffn_dim,
                       activation_function="relu", dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                       encoder_layerdrop=0.0, decoder_layerdrop=0.0, scale_embedding=True,
                       max_position_embeddings=a.max_positions, pad_token_id=PAD, bos_token_id=BOS,
                       eos_token_id=EOS, decoder_start_token_id=BOS, tie_word_embeddings=True)
    hf = M2M100ForConditionalGeneration(cfg).eval()
    m = hf.model

    def put(linear, weight, bias) -> None:
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)

    def put_attn(attn, w, b) -> None:  # w, b: the fused q, k, v projection
        for proj, wi, bi in zip((attn.q_proj, attn.k_proj, attn.v_proj), w.split(d), b.split(d)):
            put(proj, wi, bi)

    def put_norm(hf_norm, norm) -> None:
        put(hf_norm, norm.weight, norm.bias)

    with torch.no_grad():
        m.shared.weight.copy_(ours.embed.weight)
        for stack in (m.encoder, m.decoder):
            # HF numbers real tokens from padding_idx + 1; our table numbers them from 0.
            table = stack.embed_positions.weights
            table.zero_()
            table[PAD + 1 : PAD + 1 + ours.positions.shape[0]] = ours.positions[: table.shape[0] - PAD - 1]
        for hl, ol in zip(m.encoder.layers, ours.encoder):
            put_attn(hl.self_attn, ol.attn.qkv.weight, ol.attn.qkv.bias)
            put(hl.self_attn.out_proj, ol.attn.out.weight, ol.attn.out.bias)
            put_norm(hl.self_attn_layer_norm, ol.ln1)
            put_norm(hl.final_layer_norm, ol.ln2)
            put(hl.fc1, ol.ffn.fc1.weight, ol.ffn.fc1.bias)
            put(hl.fc2, ol.ffn.fc2.weight, ol.ffn.fc2.bias)
        cross_w, cross_b = ours.cross_kv.weight.split(2 * d), ours.cross_kv.bias.split(2 * d)
        for i, (hl, ol) in enumerate(zip(m.decoder.layers, ours.decoder)):
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
        put_norm(m.encoder.layer_norm, ours.enc_norm)
        put_norm(m.decoder.layer_norm, ours.dec_norm)
    return hf


def teacher_forced_gap(ours: Seq2SeqTransformer, hf, src: torch.Tensor) -> float:
    """Largest |log-prob difference| between the two models on one teacher-forced batch."""
    g = torch.Generator().manual_seed(1)
    tgt = torch.randint(4, ours.vocab_size, (src.shape[0], 20), generator=g)
    tgt[:, 0] = BOS
    with torch.inference_mode():
        mine = ours.logprobs(ours.decoder_hidden(ours.encode(src), tgt))
        theirs = hf(input_ids=src, attention_mask=src.ne(PAD), decoder_input_ids=tgt).logits.log_softmax(-1)
    return float((mine - theirs).abs().max())


def hf_generate(model, src: torch.Tensor, beam: int, n: int) -> list[list[int]]:
    # Our search forces eos after the length limit and scores it; so does forced_eos_token_id
    # at the last of n + 1 tokens. Greedy stops at the limit on both sides.
    extra = {"max_new_tokens": n + 1, "forced_eos_token_id": EOS} if beam > 1 else {"max_new_tokens": n, "forced_eos_token_id": None}
    with torch.inference_mode():
        out = model.generate(input_ids=src, attention_mask=src.ne(PAD), num_beams=beam, do_sample=False,
                             min_new_tokens=n, early_stopping=False, suppress_tokens=[PAD, BOS], **extra)
    return [[t for t in row[1:] if t not in (EOS, PAD)] for row in out.tolist()]


def sequence_scores(model: Seq2SeqTransformer, src: torch.Tensor, hyps: list[list[int]]) -> list[tuple[float, float]]:
    """Teacher-forced sums of log-probs of each hypothesis: (its tokens, its tokens and then eos)."""
    width = max(len(h) for h in hyps) + 1
    tgt_in = torch.full((len(hyps), width), PAD)
    tgt_out = torch.full((len(hyps), width), PAD)
    for i, h in enumerate(hyps):
        tgt_in[i, : len(h) + 1] = torch.tensor([BOS, *h])
        tgt_out[i, : len(h) + 1] = torch.tensor([*h, EOS])
    with torch.inference_mode():
        lp = model.logprobs(model.decoder_hidden(model.encode(src), tgt_in))
        picked = lp.gather(2, tgt_out[:, :, None]).squeeze(2).masked_fill(tgt_out.eq(PAD), 0.0)
        eos = picked.gather(1, torch.tensor([[len(h)] for h in hyps])).squeeze(1)
    total = picked.sum(1)
    return list(zip((total - eos).tolist(), total.tolist()))


def alternate(contenders: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds per call of each contender, timed in alternation after one warm-up each."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    arch = resolve_arch(ModelConfig(preset=args.preset, dropout=0.0))
    ours = Seq2SeqTransformer(arch, args.vocab, PAD).eval()
    same = m2m100_with_weights_of(ours)
    other = marian(arch, args.vocab).eval()
    src = sources(args.batch, args.vocab)
    n = args.new_tokens
    gap = teacher_forced_gap(ours, same, src)
    print(f"teacher-forced log-prob gap, mmtc vs M2M100 with the same weights: {gap:.2e}")
    results: dict[str, object] = {}
    for beam in (4, 1):
        if beam == 1:
            mine = lambda: greedy_search(ours, src, BOS, EOS, n, min_len=n)  # noqa: E731
        else:
            mine = lambda beam=beam: beam_search(ours, src, BOS, EOS, beam, 1.0, n, min_len=n)  # noqa: E731
        ours_out, theirs_out = mine(), hf_generate(same, src, beam, n)
        differ = [i for i, (a, b) in enumerate(zip(ours_out, theirs_out)) if a != b]
        agree = args.batch - len(differ)
        # Where the two differ, score both hypotheses under the same model. HF's forced eos gets
        # log-prob 0, so generate ranks the final beams by their tokens alone; we (as fairseq) add
        # eos's log-prob: then ours wins counting eos and theirs without it.
        gaps = []
        if differ:
            rows = torch.tensor(differ)
            a = sequence_scores(ours, src[rows], [ours_out[i] for i in differ])
            b = sequence_scores(ours, src[rows], [theirs_out[i] for i in differ])
            gaps = [{"tokens": round(x[0] - y[0], 4), "tokens_and_eos": round(x[1] - y[1], 4)} for x, y in zip(a, b)]
        secs = alternate({"mmtc": mine, "m2m100": lambda beam=beam: hf_generate(same, src, beam, n),
                          "marian": lambda beam=beam: hf_generate(other, src, beam, n)}, args.reps)
        rate = {name: args.batch / s for name, s in secs.items()}
        best_peer = max(rate["m2m100"], rate["marian"])
        results[f"beam{beam}"] = {"mmtc_sent_per_s": round(rate["mmtc"], 2),
                                  "hf_m2m100_sent_per_s": round(rate["m2m100"], 2),
                                  "hf_marian_sent_per_s": round(rate["marian"], 2),
                                  "ratio": round(rate["mmtc"] / best_peer, 2),
                                  "identical_outputs": f"{agree}/{args.batch}",
                                  "score_gaps_where_different": gaps}
        print(f"beam {beam}: mmtc {rate['mmtc']:.1f} sentences/s, HF generate M2M100 {rate['m2m100']:.1f}, "
              f"MarianMT {rate['marian']:.1f}; ratio to the faster {rate['mmtc'] / best_peer:.2f}; "
              f"outputs identical to M2M100's with the same weights: {agree}/{args.batch}"
              + (f" (log-prob ours - theirs where not: {gaps})" if gaps else ""))
    dest = Path("benchmarks/results/decoding.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"preset": args.preset, "batch": args.batch, "new_tokens": n, "threads": args.threads,
                                "reps": args.reps, "statistic": "median", "teacher_forced_logprob_gap": gap,
                                "results": results}, indent=1))


if __name__ == "__main__":
    main()
