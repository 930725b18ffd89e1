"""Batched decoding speed against Hugging Face `generate` on the same model shape and inputs.

    python benchmarks/decoding.py        # needs `pip install transformers`

Batch 32, exactly 64 new tokens (min = max length on both sides, so neither stops early), beam 4
and greedy, 2 threads. Outputs differ because the weights differ: MarianMT is post-LN and ours is
pre-LN, so the same weights cannot be loaded into both; the work per step is the same (same
layers, widths, heads, vocabulary, cached keys/values, batch and beam). Writes
benchmarks/results/decoding.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pipeline.config import ModelConfig
from pipeline.decode import beam_search, greedy_search
from pipeline.model import Seq2SeqTransformer, resolve_arch

from throughput import marian  # noqa: E402  (same directory)


def sources(batch: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, 24, (batch,), generator=g)
    src = torch.zeros(batch, int(lengths.max()) + 2, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        src[i, : n + 1] = torch.randint(4, vocab, (n + 1,), generator=g)
        src[i, n + 1] = 3
    return src


def timed(fn, reps: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    arch = resolve_arch(ModelConfig(preset=args.preset, dropout=0.0))
    ours = Seq2SeqTransformer(arch, args.vocab, 0).eval()
    hf = marian(arch, args.vocab).eval()
    src = sources(args.batch, args.vocab)
    n = args.new_tokens
    results = {}
    for beam in (4, 1):
        if beam == 1:
            mine = lambda: greedy_search(ours, src, 2, 3, n, min_len=n)  # noqa: E731
        else:
            mine = lambda beam=beam: beam_search(ours, src, 2, 3, beam, 1.0, n, min_len=n)  # noqa: E731

        def peer(beam=beam):
            with torch.inference_mode():
                return hf.generate(input_ids=src, attention_mask=src.ne(0), num_beams=beam, do_sample=False,
                                   max_new_tokens=n, min_new_tokens=n, early_stopping=False)

        t_ours, t_peer = timed(mine, args.reps), timed(peer, args.reps)
        results[f"beam{beam}"] = {"mmtc_sent_per_s": round(args.batch / t_ours, 2),
                                  "hf_sent_per_s": round(args.batch / t_peer, 2), "ratio": round(t_peer / t_ours, 2)}
        print(f"beam {beam}: mmtc {args.batch / t_ours:.1f} sentences/s, HF generate {args.batch / t_peer:.1f}, "
              f"ratio {t_peer / t_ours:.2f}")
    dest = Path("benchmarks/results/decoding.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"preset": args.preset, "batch": args.batch, "new_tokens": n, "threads": args.threads,
                                "results": results}, indent=1))


if __name__ == "__main__":
    main()
