"""Training throughput against a peer: the same model shape as Hugging Face MarianMT, trained with a
plain torch AdamW loop, against mmtc's model (plain loop, and through the DeepSpeed engine), on the
same token-budget batches and thread count, alternating in one run. Also model FLOP utilisation
against this machine's measured matmul peak.

    python benchmarks/throughput.py --preset tiny --precision fp32      # needs `pip install transformers`
    python benchmarks/throughput.py --preset base --precision bf16

Prints a table and writes benchmarks/results/throughput-<preset>-<precision>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.config import ModelConfig, load_recipe
from pipeline.data.batches import BatchStream
from pipeline.model import Seq2SeqTransformer, resolve_arch
from pipeline.sampling import build_sampler


def batches(recipe_path: str, max_tokens: int, n: int, sets: list[str]) -> tuple[list, int]:
    from pipeline.data.prepare import prepare_corpus

    recipe = load_recipe(recipe_path, sets)
    corpus = prepare_corpus(recipe.data, recipe.tokenizer, log=lambda _m: None)
    names = corpus.manifest.names
    specs = {d.name: d for d in corpus.manifest.directions}
    stream = BatchStream([corpus.splits["train"][x] for x in names], list(range(len(names))),
                         [corpus.tokenizer.tag_id(specs[x].tgt) for x in names],
                         build_sampler(recipe.sampling, names, corpus.sizes(names)), seed=1, stage=0,
                         max_tokens=max_tokens, chunk_steps=n)
    return [stream.step_batches(i).micro[0] for i in range(n)], corpus.tokenizer.vocab_size


def marian(arch, vocab: int):
    from transformers import MarianConfig, MarianMTModel

    cfg = MarianConfig(vocab_size=vocab, d_model=arch.d_model, encoder_layers=arch.encoder_layers,
                       decoder_layers=arch.decoder_layers, encoder_attention_heads=arch.heads,
                       decoder_attention_heads=arch.heads, encoder_ffn_dim=arch.ffn_dim, decoder_ffn_dim=arch.ffn_dim,
                       max_position_embeddings=1024, dropout=arch.dropout, activation_function="relu",
                       pad_token_id=0, eos_token_id=3, decoder_start_token_id=2, share_encoder_decoder_embeddings=True,
                       tie_word_embeddings=True, scale_embedding=True)
    return MarianMTModel(cfg)


def hf_loss(model, b, eps: float) -> tuple[torch.Tensor, int]:
    out = model(input_ids=b.src, attention_mask=b.src.ne(0), decoder_input_ids=b.tgt_in,
                decoder_attention_mask=b.tgt_in.ne(0))
    labels = b.tgt_out.masked_fill(b.tgt_out.eq(0), -100)
    loss = F.cross_entropy(out.logits.float().view(-1, out.logits.shape[-1]), labels.view(-1),
                           ignore_index=-100, label_smoothing=eps, reduction="sum")
    return loss, b.tgt_tokens


def ours_loss(model, b, eps: float) -> tuple[torch.Tensor, int]:
    loss_tok, _ = model(b.src, b.tgt_in, b.tgt_out)
    return loss_tok.sum(), b.tgt_tokens


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def flops_per_step(arch, vocab: int, src_tokens: int, tgt_tokens: int) -> float:
    """Forward + backward (3 × the forward) matmul FLOPs, output layer included."""
    d, f = arch.d_model, arch.ffn_dim
    enc = arch.encoder_layers * (2 * (4 * d * d + 2 * d * f)) * src_tokens
    dec = arch.decoder_layers * (2 * (6 * d * d + 2 * d * f)) * tgt_tokens + arch.decoder_layers * 2 * 2 * d * d * src_tokens
    out = 2 * d * vocab * tgt_tokens
    return 3.0 * (enc + dec + out)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    data, vocab = batches(args.recipe, args.max_tokens, args.batches, args.set)
    arch = resolve_arch(ModelConfig(preset=args.preset, dropout=0.1))
    amp = args.precision == "bf16"
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if amp else nullcontext
    torch.manual_seed(0)
    contenders = {"mmtc (plain loop)": (Seq2SeqTransformer(arch, vocab, 0), ours_loss),
                  "hf MarianMT": (marian(arch, vocab), hf_loss)}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, (m, _) in contenders.items()}
    tokens = {k: 0 for k in contenders}
    seconds = {k: 0.0 for k in contenders}
    for r in range(args.rounds + 1):  # round 0 warms up and is not counted
        for name, (model, lossf) in contenders.items():
            model.train()
            t0 = time.perf_counter()
            n = 0
            for b in data:
                with ctx():
                    loss, ntok = lossf(model, b, 0.1)
                (loss / ntok).backward()
                opts[name].step()
                opts[name].zero_grad(set_to_none=True)
                n += ntok
            if r:
                seconds[name] += time.perf_counter() - t0
                tokens[name] += n
    peak = matmul_peak(torch.bfloat16 if amp else torch.float32)
    src = sum(int(b.src.ne(0).sum()) for b in data) / len(data)
    tgt = sum(b.tgt_tokens for b in data) / len(data)
    fps = flops_per_step(arch, vocab, int(src), int(tgt))
    rows = {}
    for name in contenders:
        tps = tokens[name] / seconds[name]
        step_s = seconds[name] / (args.rounds * len(data))
        rows[name] = {"target_tokens_per_s": round(tps, 1), "mfu": round(fps / step_s / peak, 4)}
    best_peer = max(v["target_tokens_per_s"] for k, v in rows.items() if not k.startswith("mmtc"))
    return {"preset": args.preset, "precision": args.precision, "threads": args.threads,
            "params": {k: sum(p.numel() for p in m.parameters()) for k, (m, _) in contenders.items()},
            "target_tokens_per_step": tgt, "matmul_peak_gflops": round(peak / 1e9, 1), "rows": rows,
            "ratio_vs_best_peer": round(rows["mmtc (plain loop)"]["target_tokens_per_s"] / best_peer, 3),
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="stages/demo.yaml")
    ap.add_argument("--preset", default="tiny", choices=["tiny", "base", "big"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--max-tokens", type=int, default=4600, help="padded tokens per batch (about 4K target tokens)")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=["data.max_len=64", "tokenizer.vocab_size=8000"])
    args = ap.parse_args()
    res = run(args)
    print(f"{args.preset} {args.precision}, {args.threads} threads, {res['target_tokens_per_step']:.0f} target tokens a step, "
          f"matmul peak {res['matmul_peak_gflops']} GFLOP/s")
    for name, r in res["rows"].items():
        print(f"  {name:<20}{r['target_tokens_per_s']:>10.0f} tok/s   MFU {100 * r['mfu']:.1f}%")
    print(f"  mmtc / best peer: {res['ratio_vs_best_peer']:.2f}")
    dest = Path(f"benchmarks/results/throughput-{args.preset}-{args.precision}.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
