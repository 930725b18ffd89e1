"""Time to validate, tokenise and cache a corpus, and to load it again from the cache.

    python benchmarks/data_prep.py --manifest benchmarks/tatoeba-diverse9.yaml

Uses a fresh cache directory (so the first pass is cold), the default recipe's filters and an 8K
tokenizer; then opens the cached corpus again in this process, and once more in a fresh process
(its wall time and peak RSS: what every rank, `mmtc eval` and a resume pay). Writes
benchmarks/results/data_prep.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from data_scale import step  # benchmarks/, the script's own folder, is on sys.path

from pipeline.config import DataConfig, TokenizerConfig
from pipeline.data.manifest import load_manifest
from pipeline.data.prepare import prepare_corpus
from pipeline.data.train_splits import open_splits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", default="benchmarks/tatoeba-diverse9.yaml")
    ap.add_argument("--vocab", type=int, default=8000)
    args = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="mmtc-bench-cache-")
    # A handful of dev/test pairs exceed the default length limit: dropped and counted, as in training runs.
    data = DataConfig(corpus=args.manifest, cache_dir=cache, allow_eval_drops=True)
    tok = TokenizerConfig(vocab_size=args.vocab)
    t = time.perf_counter()
    sources, evals = open_splits(load_manifest(args.manifest), "error")  # train: the byte-level pass
    read_s = time.perf_counter() - t
    pairs = sum(s.pairs for s in sources.values()) + sum(len(r.src) for r in evals.values())
    t = time.perf_counter()
    corpus = prepare_corpus(data, tok, log=lambda _m: None, manifest_path=Path(args.manifest))
    cold_s = time.perf_counter() - t
    t = time.perf_counter()
    prepare_corpus(data, tok, log=lambda _m: None, manifest_path=Path(args.manifest))
    warm_s = time.perf_counter() - t
    tokens = sum(s.num_tokens for split in corpus.splits.values() for s in split.values())
    fresh = step(Path(args.manifest), Path(cache), args.vocab)
    fresh_s, fresh_mb = fresh["wall_s"], fresh["peak_rss_mb"]
    res = {"manifest": args.manifest, "pairs": pairs, "tokens": tokens, "read_and_validate_s": round(read_s, 2),
           "cold_prepare_s": round(cold_s, 2), "warm_load_s": round(warm_s, 2),
           "fresh_process_open_s": round(fresh_s, 2), "fresh_process_peak_rss_mb": round(fresh_mb, 1),
           "machine": "2-core CPU (this repository's dev machine)", "how": "one run"}
    print(f"{pairs} pairs ({tokens} tokens): read+validate {read_s:.1f} s; cold (read, validate, train the "
          f"tokenizer, tokenise, cache) {cold_s:.1f} s; warm (from the cache) {warm_s:.1f} s; a fresh process "
          f"opens it in {fresh_s:.2f} s (after its imports) at a peak RSS of {fresh_mb:.0f} MB")
    Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
    Path("benchmarks/results/data_prep.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
