"""Batched decoding speed against Hugging Face `generate`, with the same weights and the same outputs.

    python benchmarks/decoding.py        # needs the export extra: transformers, ctranslate2

Batch 32, exactly 64 new tokens and eos (min length 64 on both sides, eos forced at the 65th
token), beam 4 and greedy, 2 threads. The peers: `generate` on two `transformers` models of our
shape: Pegasus holding our weights as `mmtc export --format hf` writes it (so that the outputs
must agree token for token, which this script counts), and MarianMT (post-LN, random weights: the
same work per step; the issue's anchor); and CTranslate2 in float32 and int8, converted from that
Pegasus by CTranslate2's converter as `mmtc export --format ctranslate2` does (agreement counted
too). Banned tokens match (pad and bos). Timings alternate
between the contenders, `--reps` rounds, and report the median. Writes
benchmarks/results/decoding.json (or --results).

`--device cuda` puts mmtc's model and both `transformers` models on the GPU (fp32; every timed call
ends in a host copy of its tokens, so the timings include the GPU's work) and CTranslate2 there too
where its build sees a GPU (else on the CPU; the JSON's `ct2_device` says which). `--no-ct2` drops
the CTranslate2 rows (where the package is missing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline.config import ModelConfig
from pipeline.export.export import start_decoding_with
from pipeline.export.hf_model import pegasus_config, to_pegasus
from pipeline.model.decode import beam_search, greedy_search
from pipeline.model.transformer import Seq2SeqTransformer, resolve_arch

from machine import hardware  # noqa: E402  (same directory)
from throughput import marian  # noqa: E402  (same directory)

PAD, UNK, BOS, EOS = 0, 1, 2, 3


def sources(batch: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, 24, (batch,), generator=g)
    src = torch.zeros(batch, int(lengths.max()) + 2, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        src[i, : n + 1] = torch.randint(4, vocab, (n + 1,), generator=g)
        src[i, n + 1] = EOS
    return src


def pegasus_with_weights_of(ours: Seq2SeqTransformer):
    """What `mmtc export --format hf` writes: transformers' Pegasus holding `ours`' weights."""
    return to_pegasus(ours, pegasus_config(ours, PAD, BOS, EOS, UNK))


def ctranslate2_of(hf, vocab: int, workdir: Path, quantization: str, device: str = "cpu"):
    """The HF model through CTranslate2's own converter, as `mmtc export --format ctranslate2`
    does (a word-level stand-in tokenizer: these inputs are ids, not text)."""
    import ctranslate2
    from ctranslate2.converters import TransformersConverter
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    hf_dir, out = workdir / "hf", workdir / f"ct2-{quantization}"
    if not hf_dir.exists():
        hf.save_pretrained(hf_dir)
        words = {piece(i): i for i in range(vocab)}
        PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(words, unk_token=piece(UNK))),
                                pad_token=piece(PAD), unk_token=piece(UNK), bos_token=piece(BOS),
                                eos_token=piece(EOS)).save_pretrained(hf_dir)
    TransformersConverter(str(hf_dir)).convert(str(out), quantization=quantization, force=True)
    start_decoding_with(out, piece(BOS))
    return ctranslate2.Translator(str(out), device=device, compute_type=quantization, inter_threads=1,
                                  intra_threads=torch.get_num_threads())


def piece(i: int) -> str:
    return {PAD: "<pad>", UNK: "<unk>", BOS: "<s>", EOS: "</s>"}.get(i, f"t{i}")


def ct2_translate(translator, src: torch.Tensor, beam: int, n: int) -> list[list[int]]:
    # Exactly n tokens (CTranslate2 ends a hypothesis at its length limit without scoring eos).
    batch = [[piece(t) for t in row if t != PAD] for row in src.tolist()]
    res = translator.translate_batch(batch, beam_size=beam, min_decoding_length=n, max_decoding_length=n,
                                     length_penalty=1.0,
                                     suppress_sequences=[[piece(PAD)], [piece(BOS)]])
    return [[int(t[1:]) if t.startswith("t") else -1 for t in r.hypotheses[0] if t != piece(EOS)] for r in res]


def teacher_forced_gap(ours: Seq2SeqTransformer, hf, src: torch.Tensor) -> float:
    """Largest |log-prob difference| between the two models on one teacher-forced batch."""
    g = torch.Generator().manual_seed(1)
    tgt = torch.randint(4, ours.vocab_size, (src.shape[0], 20), generator=g)
    tgt[:, 0] = BOS
    tgt = tgt.to(src.device)
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
    tgt_in, tgt_out = tgt_in.to(src.device), tgt_out.to(src.device)
    with torch.inference_mode():
        lp = model.logprobs(model.decoder_hidden(model.encode(src), tgt_in))
        picked = lp.gather(2, tgt_out[:, :, None]).squeeze(2).masked_fill(tgt_out.eq(PAD), 0.0)
        eos = picked.gather(1, torch.tensor([[len(h)] for h in hyps], device=src.device)).squeeze(1)
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
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--no-ct2", action="store_true", help="leave CTranslate2 out (where it is not installed)")
    ap.add_argument("--results", default="benchmarks/results/decoding.json")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    arch = resolve_arch(ModelConfig(preset=args.preset, dropout=0.0))
    ours = Seq2SeqTransformer(arch, args.vocab, PAD).eval()
    same = pegasus_with_weights_of(ours)
    workdir = Path(tempfile.mkdtemp(prefix="decoding-ct2-"))
    ct2_device = "cpu"
    if not args.no_ct2 and args.device == "cuda":
        import ctranslate2

        ct2_device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    ct2 = {}
    for q in () if args.no_ct2 else ("float32", "int8"):
        try:
            ct2[q] = ctranslate2_of(same, args.vocab, workdir, q, ct2_device)
            if ct2_device == "cuda":  # CUDA libraries load at the first translation
                ct2_translate(ct2[q], sources(2, args.vocab), 1, 2)
        except (RuntimeError, ValueError, OSError) as e:
            if ct2_device == "cpu":
                raise
            # A CTranslate2 wheel built for another CUDA than the machine's: its rows on the CPU.
            print(f"CTranslate2 on cuda failed ({e}); its rows run on the CPU")
            ct2_device = "cpu"
            ct2 = {k: ctranslate2_of(same, args.vocab, workdir, k, "cpu") for k in (*ct2, q)}
    other = marian(arch, args.vocab).eval()
    ours, same, other = ours.to(device), same.to(device), other.to(device)
    src = sources(args.batch, args.vocab).to(device)
    n = args.new_tokens
    gap = teacher_forced_gap(ours, same, src)
    print(f"teacher-forced log-prob gap, mmtc vs the HF export (Pegasus) with the same weights: {gap:.2e}")
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
            rows = torch.tensor(differ, device=device)
            a = sequence_scores(ours, src[rows], [ours_out[i] for i in differ])
            b = sequence_scores(ours, src[rows], [theirs_out[i] for i in differ])
            gaps = [{"tokens": round(x[0] - y[0], 4), "tokens_and_eos": round(x[1] - y[1], 4)} for x, y in zip(a, b)]
        ct2_same = {q: sum(a == b for a, b in zip(ours_out, ct2_translate(t, src, beam, n))) for q, t in ct2.items()}
        secs = alternate({"mmtc": mine, "pegasus": lambda beam=beam: hf_generate(same, src, beam, n),
                          "marian": lambda beam=beam: hf_generate(other, src, beam, n),
                          **{f"ct2_{q}": (lambda t=t, beam=beam: ct2_translate(t, src, beam, n)) for q, t in ct2.items()}},
                         args.reps)
        rate = {name: args.batch / s for name, s in secs.items()}
        best_peer = max(rate["pegasus"], rate["marian"])
        results[f"beam{beam}"] = {"mmtc_sent_per_s": round(rate["mmtc"], 2),
                                  "hf_pegasus_sent_per_s": round(rate["pegasus"], 2),
                                  "hf_marian_sent_per_s": round(rate["marian"], 2),
                                  **{f"ct2_{q}_sent_per_s": round(rate[f"ct2_{q}"], 2) for q in ct2},
                                  "ratio": round(rate["mmtc"] / best_peer, 2),
                                  "identical_outputs": f"{agree}/{args.batch}",
                                  "ct2_identical_outputs": {q: f"{k}/{args.batch}" for q, k in ct2_same.items()},
                                  "score_gaps_where_different": gaps}
        print(f"beam {beam}: mmtc {rate['mmtc']:.1f} sentences/s, HF generate Pegasus {rate['pegasus']:.1f}, "
              f"MarianMT {rate['marian']:.1f}; ratio to the faster {rate['mmtc'] / best_peer:.2f}; "
              + ("CTranslate2 " + ", ".join(f"{q} {rate[f'ct2_{q}']:.1f}" for q in ct2) + "; " if ct2 else "")
              + f"outputs identical to the HF export's: {agree}/{args.batch}, to CTranslate2's: {ct2_same}"
              + (f" (log-prob ours - theirs where not: {gaps})" if gaps else ""))
    dest = Path(args.results)
    dest.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if args.device == "cpu" else {"device": args.device, "ct2_device": ct2_device if ct2 else None,
                                              "hardware": hardware()}
    dest.write_text(json.dumps({"preset": args.preset, "batch": args.batch, "new_tokens": n, "threads": args.threads,
                                **extra,
                                "reps": args.reps, "statistic": "median", "teacher_forced_logprob_gap": gap,
                                "results": results}, indent=1))


if __name__ == "__main__":
    main()
