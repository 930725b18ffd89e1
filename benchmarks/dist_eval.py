"""Stage-end decoding on every rank against rank 0 alone: the same checkpoint, split and settings.

    python benchmarks/dist_eval.py RUN_DIR --split dev [--checkpoint TAG] [--max-sentences N]

"alone" is what a 2-rank run did at a stage end before decoding was shared: rank 0 decoded every
sentence with its share of the cores (cores / 2 threads) while rank 1 waited. "shared" is two
ranks (gloo), each with cores / 2 threads, decoding the one-rank batches dealt out by tokens, rank
0 scoring (pipeline/evaluation/evaluate.py). Both time `evaluate_run` from a barrier to rank 0's
table (loading the weights included, corpus loading not); `--rounds` alternates them and reports
the median. The hypotheses of the two must be identical (counted). Writes
benchmarks/results/dist_eval.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pipeline.engine.collectives import free_port

from machine import hardware


def decode(args: argparse.Namespace) -> None:
    """One rank (or the lone process) of a measurement: prints a JSON line on rank 0."""
    from pipeline.data.prepare import open_recorded
    from pipeline.engine.collectives import barrier
    from pipeline.engine.ds_engine import setup_distributed
    from pipeline.evaluation.run_eval import evaluate_run
    from pipeline.rundir.layout import RunDir

    dist = setup_distributed(args.threads)
    run = RunDir(args.run_dir)
    recipe = run.load_config()
    if args.max_sentences:
        recipe.eval.max_sentences = args.max_sentences
    corpus = open_recorded(recipe, run.tokenizer, run.corpus_record, lambda _m: None)
    barrier()
    t0 = time.perf_counter()
    results = evaluate_run(run, corpus, recipe, split=args.split, tag=args.checkpoint, dist=dist)
    seconds = time.perf_counter() - t0
    if results is not None:
        tag = results["checkpoint"]
        hyps = {n: (run.eval_dir(tag) / args.split / f"{n}.hyp").read_text() for n in results["directions"]}
        print("RESULT " + json.dumps({"seconds": seconds, "hyps": hyps, "world": dist.world,
                                      "bleu": {n: e["bleu"] for n, e in results["directions"].items()}}), flush=True)
    barrier()


def measure(args: argparse.Namespace, world: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, args.run_dir, "--split", args.split, "--worker", "--threads", str(threads)]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    if args.max_sentences:
        cmd += ["--max-sentences", str(args.max_sentences)]
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError("\n----\n".join(outs))
    line = next(x for x in outs[0].splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--split", default="dev", choices=["dev", "test"])
    ap.add_argument("--checkpoint")
    ap.add_argument("--max-sentences", type=int)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--results", default="benchmarks/results/dist_eval.json")
    args = ap.parse_args()
    if args.worker:
        decode(args)
        return
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.nproc)
    times: dict[str, list[float]] = {"alone": [], "shared": []}
    same, total = 0, 0
    for _ in range(args.rounds):
        alone = measure(args, 1, threads)
        shared = measure(args, args.nproc, threads)
        times["alone"].append(alone["seconds"])
        times["shared"].append(shared["seconds"])
        for name, text in alone["hyps"].items():
            a, b = text.splitlines(), shared["hyps"][name].splitlines()
            total += len(a)
            same += sum(x == y for x, y in zip(a, b)) if len(a) == len(b) else 0
        print(f"alone {alone['seconds']:.1f} s, shared by {args.nproc} ranks {shared['seconds']:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"hardware": hardware(), "run_dir": args.run_dir, "split": args.split, "checkpoint": args.checkpoint,
           "max_sentences": args.max_sentences, "nproc": args.nproc, "threads_per_rank": threads,
           "sentences": total // max(1, args.rounds), "rounds": args.rounds, "seconds": times, "median": med,
           "speedup": round(med["alone"] / med["shared"], 2), "identical_hypotheses": f"{same} of {total}"}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(out, indent=1) + "\n")
    print(f"median: alone {med['alone']:.1f} s, shared {med['shared']:.1f} s (x{out['speedup']}); "
          f"identical hypotheses {same} of {total}; {args.results}")


if __name__ == "__main__":
    main()
