"""fairseq-train as a throughput peer: the same corpus (our token ids, so the same vocabulary and
segmentation), the same model shape and thread count, in fairseq's own batching and loop.

Used by throughput.py; fairseq 0.12.2 lives in its own venv (benchmarks/setup_peers.sh) because
it pins old hydra/omegaconf releases.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
from pathlib import Path


def export(args: argparse.Namespace, data_dir: Path) -> tuple[Path, int]:
    """Writes our tokenised training pairs as id strings and binarises them with fairseq-preprocess."""
    from pipeline.curriculum.recipe import load_recipe
    from pipeline.data.prepare import prepare_corpus

    recipe = load_recipe(args.recipe, args.set)
    corpus = prepare_corpus(recipe.data, recipe.tokenizer, log=lambda _m: None)
    vocab = corpus.tokenizer.vocab_size
    binary = data_dir / "bin"
    if (binary / "train.src-tgt.src.bin").exists():
        return binary, vocab
    raw = data_dir / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    specs = {d.name: d for d in corpus.manifest.directions}
    with open(raw / "train.src", "w") as fs, open(raw / "train.tgt", "w") as ft:
        for name in corpus.manifest.names:
            split, tag = corpus.splits["train"][name], corpus.tokenizer.tag_id(specs[name].tgt)
            for i in range(len(split)):
                fs.write(" ".join(map(str, [tag, *split.src_ids(i).tolist()])) + "\n")
                ft.write(" ".join(map(str, split.tgt_ids(i).tolist())) + "\n")
    for side in ("src", "tgt"):  # fairseq loads a valid split even with --disable-validation
        with open(raw / f"train.{side}") as f:
            (raw / f"valid.{side}").write_text("".join(itertools.islice(f, 200)))
    (raw / "dict.txt").write_text("".join(f"{i} 1\n" for i in range(vocab)))
    cmd = [str(Path(args.fairseq_python).parent / "fairseq-preprocess"), "--source-lang", "src", "--target-lang",
           "tgt", "--trainpref", str(raw / "train"), "--validpref", str(raw / "valid"), "--destdir", str(binary), "--srcdict", str(raw / "dict.txt"),
           "--tgtdict", str(raw / "dict.txt"), "--workers", str(args.threads)]
    subprocess.run(cmd, check=True, capture_output=True)
    return binary, vocab


def measure(python: Path, args: argparse.Namespace, arch, data_dir: Path) -> dict | None:
    if args.precision == "bf16":
        # fairseq 0.12.2 reads `--bf16 --cpu` as TPU training (its trainer asks torch_xla for the
        # device), so it has no CPU bf16 to compare with.
        print("fairseq: no CPU bf16 in fairseq 0.12.2 (--bf16 means TPU there); skipped")
        return None
    binary, _ = export(args, data_dir)
    L = arch.encoder_layers
    cmd = [str(python), "-m", "fairseq_cli.train", str(binary), "--arch", "transformer", "--share-all-embeddings",
           "--encoder-layers", str(L), "--decoder-layers", str(arch.decoder_layers),
           "--encoder-embed-dim", str(arch.d_model), "--decoder-embed-dim", str(arch.d_model),
           "--encoder-ffn-embed-dim", str(arch.ffn_dim), "--decoder-ffn-embed-dim", str(arch.ffn_dim),
           "--encoder-attention-heads", str(arch.heads), "--decoder-attention-heads", str(arch.heads),
           "--encoder-normalize-before", "--decoder-normalize-before", "--activation-fn", "relu",
           "--dropout", "0.1", "--optimizer", "adam", "--lr", "1e-4",
           "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
           "--max-tokens", str(args.max_tokens), "--required-batch-size-multiple", "1",
           "--max-update", str(args.fairseq_updates), "--cpu", "--num-workers", "0", "--log-format", "json",
           "--log-interval", "10", "--disable-validation", "--no-save", "--seed", "1", "--no-progress-bar",
           "--max-source-positions", "1024", "--max-target-positions", "1024"]
    if args.precision == "bf16":
        cmd.append("--bf16")
    # Without the rendezvous variables our engine set in this process: fairseq would join it.
    launcher = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    logs = [json.loads(m) for m in re.findall(r"train_inner \| (\{.*\})", done.stdout + done.stderr)]
    if done.returncode or len(logs) < 2:
        tail = (done.stdout + done.stderr)[-1500:]
        print(f"fairseq failed (exit {done.returncode}):\n{tail}")
        return {"error": tail[-300:], "target_tokens_per_s": 0.0}
    timed = logs[1:]  # the first interval includes start-up
    wps = sum(float(r["wps"]) for r in timed) / len(timed)
    wpb = sum(float(r["wpb"]) for r in timed) / len(timed)
    return {"target_tokens_per_s": round(wps, 1), "target_tokens_per_step": round(wpb, 1),
            "updates_timed": 10 * len(timed)}
