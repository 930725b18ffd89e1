"""Data preparation at scale: cold prepare and warm open of tatoeba-diverse9 grown to N pairs.

    python benchmarks/data_scale.py --sizes 0,1000000,3000000 [--work /tmp/mmtc-scale]

Size 0 is the corpus as it is (443K pairs). For N > 0 the largest direction (eng-deu) is repeated
until the corpus holds N pairs, each repeated line made unique with a marker (" #k" on both sides,
k the repetition), so that no two lines are equal and nothing is deduplicated away; the other
directions and every dev/test set stay as they are. Each size is prepared in a fresh process with
an empty cache (cold: read, validate, train the tokenizer, tokenise, cache), then opened again in
another fresh process (warm). Per step: wall seconds, CPU seconds (user + system, so CPU / wall is
the cores in use out of this machine's), peak RSS (VmHWM of the process) and, for cold, the cache's
size on disk. Disk: each grown corpus takes about 95 bytes per pair of text, the cache about 60.
Writes benchmarks/results/data_scale.json (merged by size).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "benchmarks" / "tatoeba-diverse9.yaml"
GROW = "eng-deu"

STEP = """
import json, resource, sys, time
from pathlib import Path
import numpy as np
from pipeline.balance.static import TemperatureParams, TemperatureSampler
from pipeline.config import DataConfig, TokenizerConfig
from pipeline.data.batches import BatchStream
from pipeline.data.prepare import prepare_corpus
t = time.perf_counter()
c = prepare_corpus(DataConfig(corpus=sys.argv[1], cache_dir=sys.argv[2], allow_eval_drops=True),
                   TokenizerConfig(vocab_size=int(sys.argv[3])), log=lambda _m: None, manifest_path=Path(sys.argv[1]))
wall = time.perf_counter() - t
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
peak = [int(x.split()[1]) / 1024 for x in open("/proc/self/status") if x.startswith("VmHWM")][0]
row = {"wall_s": wall, "cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, "peak_rss_mb": peak,
       "worker_peak_rss_mb": kids.ru_maxrss / 1024, "pairs": sum(len(s) for s in c.splits["train"].values())}
steps = int(sys.argv[4])
if steps:
    names = list(c.splits["train"])
    splits = [c.splits["train"][n] for n in names]
    tags = [c.tokenizer.tag_id(n.split("-")[1]) for n in names]
    sampler = TemperatureSampler(names, [len(s) for s in splits], TemperatureParams(temperature=5.0))
    stream = BatchStream(splits, list(range(len(names))), tags, sampler, seed=1, stage=0, max_tokens=4096, chunk_steps=100)
    times = []
    for k in range(steps):
        t = time.perf_counter()
        stream.step_batches(k)
        times.append(time.perf_counter() - t)
    row["batch_ms_per_step"] = 1000 * float(np.median(times))
    row["batch_ms_per_step_mean"] = 1000 * float(np.mean(times))
    # A training step of the tiny model (fp32, AdamW, 2,048-token batches) with its batches drawn
    # from this corpus: whether the data side shows in a real step.
    import torch
    from pipeline.config import ModelConfig, RecipeConfig
    from pipeline.model.transformer import build_model
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = build_model(RecipeConfig(model=ModelConfig(preset="tiny", dropout=0.0)), c.tokenizer.vocab_size, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stream = BatchStream(splits, list(range(len(names))), tags, sampler, seed=2, stage=0, max_tokens=2048, chunk_steps=100)
    times = []
    for k in range(int(sys.argv[5])):
        t = time.perf_counter()
        for b in stream.step_batches(k).micro:
            loss, _ = model(b.src, b.tgt_in, b.tgt_out)
            (loss.sum() / b.tgt_tokens).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    row["train_step_s_median"] = float(np.median(times[5:]))
    row["train_step_s_iqr"] = [float(np.percentile(times[5:], 25)), float(np.percentile(times[5:], 75))]
print(json.dumps(row))
"""


def grown(n: int, work: Path) -> Path:
    """A manifest of tatoeba-diverse9 with eng-deu's train split grown so the corpus has n pairs."""
    spec = yaml.safe_load(MANIFEST.read_text())
    for d in spec["directions"]:
        for split in ("train", "dev", "test"):
            for side in ("src", "tgt"):
                d[split][side] = str((MANIFEST.parent / d[split][side]).resolve())
    if n == 0:
        out = work / "n0.yaml"
        out.write_text(yaml.safe_dump(spec, sort_keys=False))
        return out
    total = sum(Path(d["train"]["src"]).read_bytes().count(b"\n") for d in spec["directions"])
    deu = next(d for d in spec["directions"] if f"{d['src']}-{d['tgt']}" == GROW)
    base = [Path(deu["train"][s]).read_bytes().splitlines() for s in ("src", "tgt")]
    want = n - (total - len(base[0]))
    folder = work / f"n{n}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "train.eng", folder / "train.deu"]
    if not all(p.is_file() for p in paths):
        with open(paths[0], "wb") as fs, open(paths[1], "wb") as ft:
            for i in range(want):
                k, j = divmod(i, len(base[0]))
                mark = b"" if k == 0 else f" #{k}".encode()
                fs.write(base[0][j] + mark + b"\n")
                ft.write(base[1][j] + mark + b"\n")
        old = time.time() - 60  # older than the fingerprints' racy window, as real data is
        for p in paths:
            os.utime(p, (old, old))
    deu["train"] = {"src": str(paths[0]), "tgt": str(paths[1])}
    out = work / f"n{n}.yaml"
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def step(manifest: Path, cache: Path, vocab: int = 8000, steps: int = 0, train_steps: int = 0) -> dict[str, float]:
    """Prepare (or, with a filled cache, open) the corpus in a fresh process: its wall and CPU
    seconds (imports not counted; the worker processes' CPU included), peak RSS of the process and
    of its largest worker and, with `steps`, the median time per step of planning and collating
    a step's batches (4096-token micro-batches, τ=5) over the opened corpus."""
    out = subprocess.run([sys.executable, "-c", STEP, str(manifest), str(cache), str(vocab), str(steps), str(train_steps)],
                         capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0,1000000", help="comma-separated corpus sizes in pairs (0: as it is)")
    ap.add_argument("--steps", type=int, default=500, help="batch steps timed after the warm open")
    ap.add_argument("--train-steps", type=int, default=65, help="tiny-model training steps timed after them (first 5 not counted)")
    ap.add_argument("--work", default="/tmp/mmtc-scale", help="where the grown corpora and caches go")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "data_scale.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"rows": {}}
    for n in (int(x) for x in args.sizes.split(",") if x):
        manifest = grown(n, work)
        cache = work / f"cache-{n}"
        shutil.rmtree(cache, ignore_errors=True)
        cold = step(manifest, cache)
        warm = step(manifest, cache, steps=args.steps, train_steps=args.train_steps)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        row = {"code": commit, "pairs": cold["pairs"], "cold": cold, "warm": warm, "cache_mb": round(du(cache) / 2**20, 1),
               "cold_pairs_per_s": round(cold["pairs"] / cold["wall_s"]), "cores_used_cold": round(cold["cpu_s"] / cold["wall_s"], 2)}
        results["rows"][str(n)] = row
        print(f"{row['pairs']:>10} pairs: cold {cold['wall_s']:.1f} s ({row['cold_pairs_per_s']} pairs/s, "
              f"{row['cores_used_cold']} cores, peak {cold['peak_rss_mb']:.0f} MB, cache {row['cache_mb']} MB); "
              f"warm open {warm['wall_s']:.2f} s (peak {warm['peak_rss_mb']:.0f} MB); "
              f"batches {warm.get('batch_ms_per_step', 0):.2f} ms/step; "
              f"train step {warm.get('train_step_s_median', 0):.3f} s", flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    results["machine"] = f"{os.cpu_count()}-core CPU, {os.uname().sysname}"
    results["how"] = ("one run per size; each step a fresh process; tokenizer 8K unigram, default filters; CPU "
                      "includes the worker processes; batch ms/step: median over --steps steps after the warm open")
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
