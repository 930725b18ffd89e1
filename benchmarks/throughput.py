"""Training throughput against a peer: the same model shape as Hugging Face MarianMT, trained with a
plain torch AdamW loop, against mmtc's model (plain loop, and through the DeepSpeed engine), on the
same token-budget batches and thread count, alternating in one run. Also model FLOP utilisation
against this machine's measured matmul peak.

    python benchmarks/throughput.py --preset tiny --precision fp32      # needs `pip install transformers`
    python benchmarks/throughput.py --preset base --precision bf16
    bash benchmarks/setup_peers.sh   # once: a venv with fairseq 0.12.2; then fairseq-train is timed too

Prints a table and writes benchmarks/results/throughput-<preset>-<precision>.json (or --results).

Where CUDA is available everything runs on the GPU (mmtc's engine goes there by itself, as in
`mmtc run`): the batches, both plain loops and autocast, with the timings synchronised, and the
peak is a bf16 (or fp32) 8192² matmul on the GPU; --threads then sets only the host's threads.

Precision: fp32 is fp32 for everyone. bf16 is each system's own bf16 training: torch.autocast for the
plain loops (ours and the HF peer), DeepSpeed's bf16 mode (bf16 weights, fp32 master copy in the
optimizer) for mmtc's engine, and `--bf16` for fairseq.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.balance.static import build_sampler
from pipeline.config import ModelConfig
from pipeline.core.hostmem import keep_freed_memory
from pipeline.curriculum.recipe import load_recipe
from pipeline.data.batches import BatchStream
from pipeline.model.transformer import Seq2SeqTransformer, resolve_arch

from machine import hardware  # same directory

# The device mmtc's engine picks (pipeline.engine.ds_engine.setup_distributed): the GPU when there is one.
DEVICE = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def sync() -> None:
    """Wait for queued GPU work, so that wall-clock times cover it (nothing to wait for on the CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def to_device(b):
    return dataclasses.replace(b, src=b.src.to(DEVICE), tgt_in=b.tgt_in.to(DEVICE), tgt_out=b.tgt_out.to(DEVICE),
                               direction=b.direction.to(DEVICE))


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


def engine_contender(args: argparse.Namespace, arch, vocab: int):
    """mmtc's model inside its DeepSpeed engine, as `mmtc run` trains it (one process)."""
    from pipeline.curriculum.recipe import load_recipe
    from pipeline.engine.ds_engine import Engine, setup_distributed

    sets = [*args.set, f"model.preset={args.preset}", "model.dropout=0.1",
            f"train.precision={'bf16' if args.precision == 'bf16' else 'fp32'}", "train.lr=1e-4",
            "train.warmup_steps=0", "train.clip_norm=0"]
    recipe = load_recipe(args.recipe, sets)
    torch.manual_seed(0)
    engine = Engine(Seq2SeqTransformer(arch, vocab, 0), recipe, setup_distributed(args.threads), 10**6)
    engine.train()

    def step(b) -> int:
        engine.set_boundary(True)
        loss_tok, _ = engine(b.src, b.tgt_in, b.tgt_out)
        engine.backward(loss_tok.sum() / b.tgt_tokens)
        engine.step()
        return b.tgt_tokens

    return step


def plain_contender(model, lossf, ctx):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step(b) -> int:
        with ctx():
            loss, ntok = lossf(model, b, 0.1)
        (loss / ntok).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return ntok

    return step


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    if DEVICE.type == "cuda":
        # 2048² takes microseconds on a GPU (launch-bound): a large product, synchronised.
        n, reps = 8192, 20
    a, b = torch.randn(n, n, dtype=dtype, device=DEVICE), torch.randn(n, n, dtype=dtype, device=DEVICE)
    for _ in range(3 if DEVICE.type == "cuda" else 2):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def flops_per_step(arch, vocab: int, data: list) -> float:
    """Forward + backward (3 × the forward) FLOPs of one batch on average: the projections and the
    output layer on real tokens, and attention's two products (QKᵀ and AV) over the real key
    length of each sentence (4·d FLOPs per query-key pair, all pairs counted, as PaLM's MFU does)."""
    d, f = arch.d_model, arch.ffn_dim
    total = 0.0
    for b in data:
        src_len, tgt_len = b.src.ne(0).sum(1).double(), b.tgt_in.ne(0).sum(1).double()
        src, tgt = float(src_len.sum()), float(tgt_len.sum())
        enc = arch.encoder_layers * (2 * (4 * d * d + 2 * d * f) * src + 4 * d * float((src_len**2).sum()))
        dec = arch.decoder_layers * (2 * (6 * d * d + 2 * d * f) * tgt + 2 * 2 * d * d * src
                                     + 4 * d * float((tgt_len**2).sum() + (tgt_len * src_len).sum()))
        total += 3.0 * (enc + dec + 2 * d * vocab * tgt)
    return total / len(data)


def fairseq_row(args: argparse.Namespace, arch, data_dir: Path) -> dict | None:
    """fairseq-train on the same corpus and shape, in its own venv (benchmarks/setup_peers.sh)."""
    if args.no_fairseq:
        print("fairseq: --no-fairseq; skipped")
        return None
    python = Path(args.fairseq_python)
    if not python.exists():
        print(f"fairseq: {python} not found (run benchmarks/setup_peers.sh); skipped")
        return None
    from fairseq_peer import measure

    return measure(python, args, arch, data_dir)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    # What every mmtc training process does first; the in-process MarianMT peer shares it (fairseq,
    # in its own process, keeps glibc's defaults, as its users run it).
    tuned_malloc = keep_freed_memory()
    data, vocab = batches(args.recipe, args.max_tokens, args.batches, args.set)
    data = [to_device(b) for b in data]
    arch = resolve_arch(ModelConfig(preset=args.preset, dropout=0.1))
    amp = args.precision == "bf16"
    ctx = (lambda: torch.autocast(DEVICE.type, dtype=torch.bfloat16)) if amp else nullcontext
    torch.manual_seed(0)
    ours, peer = Seq2SeqTransformer(arch, vocab, 0).to(DEVICE), marian(arch, vocab).to(DEVICE)
    params = {"mmtc": sum(p.numel() for p in ours.parameters()), "hf MarianMT": sum(p.numel() for p in peer.parameters())}
    contenders = {"mmtc (plain loop)": plain_contender(ours, ours_loss, ctx),
                  "mmtc (DeepSpeed engine)": engine_contender(args, arch, vocab),
                  "hf MarianMT": plain_contender(peer, hf_loss, ctx)}
    tokens = {k: 0 for k in contenders}
    seconds = {k: 0.0 for k in contenders}
    # The peak is measured again after every round and each round's MFU taken against it, so that
    # a shared machine's slow spells move numerator and denominator together; the median is reported.
    fps = flops_per_step(arch, vocab, data)
    mfu: dict[str, list[float]] = {k: [] for k in contenders}
    peaks = []
    for r in range(args.rounds + 1):  # round 0 warms up and is not counted
        took = {}
        for name, step in contenders.items():
            sync()
            t0 = time.perf_counter()
            n = sum(step(b) for b in data)
            sync()
            took[name] = time.perf_counter() - t0
            if r:
                seconds[name] += took[name]
                tokens[name] += n
        if r:
            peaks.append(matmul_peak(torch.bfloat16 if amp else torch.float32))
            for name in contenders:
                mfu[name].append(fps / (took[name] / len(data)) / peaks[-1])
    peak = statistics.median(peaks)
    tgt = sum(b.tgt_tokens for b in data) / len(data)
    rows = {}
    for name in contenders:
        tps = tokens[name] / seconds[name]
        rows[name] = {"target_tokens_per_s": round(tps, 1), "mfu": round(statistics.median(mfu[name]), 4),
                      "mfu_per_round": [round(m, 4) for m in mfu[name]]}
    fairseq = fairseq_row(args, arch, Path(args.fairseq_data))
    if fairseq:
        rows["fairseq 0.12.2"] = fairseq
    peers = {k: v["target_tokens_per_s"] for k, v in rows.items() if not k.startswith("mmtc")}
    best = max(peers, key=peers.get)
    return {"preset": args.preset, "precision": args.precision, "threads": args.threads, "params": params,
            "target_tokens_per_step": tgt, "flops_per_step": fps, "matmul_peak_gflops": round(peak / 1e9, 1),
            "rows": rows, "best_peer": best, "malloc_keeps_freed_memory": tuned_malloc,
            "ratio_vs_best_peer": {k: round(v["target_tokens_per_s"] / peers[best], 3)
                                   for k, v in rows.items() if k.startswith("mmtc")},
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
            "device": DEVICE.type, "hardware": hardware()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="stages/demo.yaml")
    ap.add_argument("--preset", default="tiny", choices=["tiny", "base", "big"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--max-tokens", type=int, default=4600, help="padded tokens per batch (about 4K target tokens)")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=["data.max_len=64", "tokenizer.vocab_size=8000"])
    ap.add_argument("--fairseq-python", default="benchmarks/work/peers/bin/python",
                    help="a Python with fairseq 0.12.2 (benchmarks/setup_peers.sh makes it)")
    ap.add_argument("--fairseq-data", default="benchmarks/work/fairseq-data")
    ap.add_argument("--fairseq-updates", type=int, default=60)
    ap.add_argument("--no-fairseq", action="store_true", help="skip the fairseq row even where its venv exists")
    ap.add_argument("--results", default="", help="default: benchmarks/results/throughput-<preset>-<precision>.json")
    args = ap.parse_args()
    res = run(args)
    print(f"{args.preset} {args.precision} on {res['hardware']}, {args.threads} threads, "
          f"{res['target_tokens_per_step']:.0f} target tokens a step, "
          f"matmul peak {res['matmul_peak_gflops']} GFLOP/s")
    for name, r in res["rows"].items():
        mfu = f"MFU {100 * r['mfu']:.1f}%" if "mfu" in r else "(its own batches)"
        print(f"  {name:<26}{r['target_tokens_per_s']:>10.0f} tok/s   {mfu}")
    for name, ratio in res["ratio_vs_best_peer"].items():
        print(f"  {name} / {res['best_peer']}: {ratio:.2f}")
    dest = Path(args.results or f"benchmarks/results/throughput-{args.preset}-{args.precision}.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
