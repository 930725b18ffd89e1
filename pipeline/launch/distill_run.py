"""`mmtc distill`: plan a sequence-level distillation, decode its shards on every local process
(`--nproc`) or as a Slurm job array (`--slurm`), then merge (`pipeline/evaluation/seqkd.py`).

A shard is one process decoding units s, s+N, ...; each unit is written when it is done, so the
same command run again (or a requeued array element) decodes only what is missing."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from pipeline.core.hostinfo import usable_cores
from pipeline.evaluation import seqkd
from pipeline.launch.slurm import SlurmOptions, directives, options_from_args, sbatch


def _plan(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    keep = [x for x in args.keep_real.split(",") if x]
    plan = seqkd.make_plan(args.teacher_run, args.corpus, [x for x in args.directions.split(",") if x], keep,
                           args.unit, args.beam, args.checkpoint)
    seqkd.write_or_check_plan(out, plan)
    return out


def _device(shard: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", shard % torch.cuda.device_count())
    return torch.device("cpu")


def _shard_command(args: argparse.Namespace, shard: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "distill", args.teacher_run, "--corpus", args.corpus, "--out", args.out,
            "--directions", args.directions, "--keep-real", args.keep_real, "--beam", str(args.beam),
            "--unit", str(args.unit), *(["--checkpoint", args.checkpoint] if args.checkpoint else []), "--shard", shard]


def cmd_distill(args: argparse.Namespace) -> int:
    # Shards and the merge use the plan the submitting command wrote (no second pass over the sources).
    out = Path(args.out)
    if not ((args.shard or args.merge_only) and (out / seqkd.PLAN).is_file()):
        out = _plan(args)
    if args.merge_only:
        seqkd.merge(out)
        return 0
    if args.shard:
        k, n = (int(x) for x in args.shard.split("/"))
        if not 0 <= k < n:
            raise ValueError(f"--shard {args.shard}: K must be in [0, N)")
        torch.set_num_threads(max(1, usable_cores() // max(1, int(os.environ.get("MMTC_DISTILL_LOCAL", "1")))))
        seqkd.run_shard(out, k, n, _device(k))
        return 0
    if args.slurm:
        return _submit(args, out)
    if args.nproc == 1:
        seqkd.run_shard(out, 0, 1, _device(0))
    else:
        env = dict(os.environ, MMTC_DISTILL_LOCAL=str(args.nproc))
        procs = [subprocess.Popen(_shard_command(args, f"{k}/{args.nproc}"), env=env) for k in range(args.nproc)]
        failed = [k for k, p in enumerate(procs) if p.wait() != 0]
        if failed:
            print(f"mmtc distill: shards {failed} failed; the same command resumes them", file=sys.stderr)
            return 1
    seqkd.merge(out)
    return 0


def _submit(args: argparse.Namespace, out: Path) -> int:
    opts: SlurmOptions = options_from_args(args)
    shards = args.shards or args.nproc
    logs = out / "slurm"
    logs.mkdir(parents=True, exist_ok=True)
    python = [opts.python]
    shard = " ".join(shlex.quote(x) for x in python + _shard_command(args, f"${{SLURM_ARRAY_TASK_ID}}/{shards}")[1:])
    shard = shard.replace(shlex.quote(f"${{SLURM_ARRAY_TASK_ID}}/{shards}"), f'"${{SLURM_ARRAY_TASK_ID}}/{shards}"')
    merge = " ".join(shlex.quote(x) for x in [*python, *_shard_command(args, "0/1")[1:-2], "--merge-only"])
    scripts = {}
    for name, body, array in (("shards", shard, shards), ("merge", merge, 0)):
        found = directives(opts, f"{opts.job_name or 'mmtc-distill'}-{name}",
                           logs / (f"{name}-%A_%a.log" if array else f"{name}-%j.log"), array, False)
        # no early-warning signal: a unit is written whole or not at all, so a preempted or timed-out
        # element loses at most its current unit, and its requeue resumes from the rest
        lines = ["#!/bin/bash", *[x for x in found if "--signal=" not in x], "set -euo pipefail", body, ""]
        scripts[name] = logs / f"{name}.sbatch"
        scripts[name].write_text("\n".join(lines))
    if args.dry_run:
        for path in scripts.values():
            print(f"# ---- {path}\n{path.read_text()}")
        return 0
    job = sbatch(scripts["shards"])
    merged = sbatch(scripts["merge"], dependency=job)
    print(f"submitted: shards as job array {job} ({shards} elements), merge as job {merged} (afterok); "
          f"logs in {logs}")
    return 0
