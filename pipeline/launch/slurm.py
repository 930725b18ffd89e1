"""`mmtc submit` and `mmtc sweep --slurm`: sbatch scripts from slurm/train.sbatch, submitted with
`sbatch --parsable`, job ids recorded in the run directory (`slurm/jobs.jsonl`). The run directory
is prepared on the submit host, as `mmtc run` does, so data errors surface now rather than in a
queued job, and the tasks only read the cache. One job runs every stage, or (`--chain-stages`)
one job per stage, each `afterok` on the previous one. About 300 lines: the sbatch options, the
script, submission and the job record are one job (what `mmtc submit` does), best read together."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import PACKAGE_ROOT
from pipeline.core.preemption import EXIT_PREEMPTED

if TYPE_CHECKING:
    from pipeline.config import RecipeConfig
    from pipeline.rundir.layout import RunDir

TEMPLATE = PACKAGE_ROOT / "slurm" / "train.sbatch"


class SlurmError(ValueError):
    """sbatch missing or refusing; a ValueError so that `mmtc` reports it in one line (exit 2)."""


@dataclass
class SlurmOptions:
    nodes: int = 1
    gpus_per_node: int = 0  # 0: a CPU partition (gloo), tasks_per_node tasks per node
    tasks_per_node: int | None = None  # default: one per GPU (1 without GPUs)
    cpus_per_task: int | None = None
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    qos: str | None = None
    signal_seconds: int = 300  # the warning before the time limit: time enough to save
    max_requeues: int = 5
    job_name: str | None = None
    python: str = sys.executable
    sbatch_args: list[str] = field(default_factory=list)

    @property
    def tasks(self) -> int:
        return self.tasks_per_node or self.gpus_per_node or 1

    def check(self) -> None:
        if self.nodes < 1 or self.tasks < 1 or self.gpus_per_node < 0:
            raise ValueError("--nodes and --tasks-per-node must be at least 1, --gpus-per-node at least 0")
        if self.gpus_per_node and self.tasks != self.gpus_per_node:
            raise ValueError(f"one task per GPU: --tasks-per-node {self.tasks_per_node} with "
                             f"--gpus-per-node {self.gpus_per_node}")


def resources(opts: SlurmOptions) -> list[str]:
    out = [f"--nodes={opts.nodes}", f"--ntasks-per-node={opts.tasks}"]
    if opts.gpus_per_node:
        out.append(f"--gpus-per-node={opts.gpus_per_node}")
    if opts.cpus_per_task:
        out.append(f"--cpus-per-task={opts.cpus_per_task}")
    return out


def directives(opts: SlurmOptions, name: str, output: Path, array: int, chained: bool) -> list[str]:
    lines = [f"--job-name={name}", *resources(opts)]
    lines += [f"--{k}={v}" for k, v in (("partition", opts.partition), ("time", opts.time),
                                         ("account", opts.account), ("qos", opts.qos)) if v]
    lines += [f"--signal=B:USR1@{opts.signal_seconds}", "--requeue",
              # a requeued job appends to its log instead of replacing the first attempt's
              "--open-mode=append", f"--output={output}", f"--chdir={Path.cwd()}"]
    if array:
        lines.append(f"--array=0-{array - 1}")
    if chained:
        # a stage whose predecessor failed can never run: cancel it rather than leave it pending
        lines.append("--kill-on-invalid-dep=yes")
    return [f"#SBATCH {shlex.quote(x)}" for x in [*lines, *opts.sbatch_args]]


def render_script(run_dirs: Sequence[Path], opts: SlurmOptions, *, array: bool = False,
                  until_stage: str | None = None, stage: str | None = None, allow_change: str = "") -> str:
    """The sbatch script for one run, or one stage of it (`stage`, chained; `until_stage` stops the
    trainer after it), or, with `array`, a job array with one of `run_dirs` per element."""
    opts.check()
    dirs = [Path(d).resolve() for d in run_dirs]
    if not array:
        setup = f"RUN_DIR={shlex.quote(str(dirs[0]))}"
        output, what = dirs[0] / "slurm" / "%x-%j.out", str(dirs[0])
    else:
        setup = "\n".join(["RUN_DIRS=(", *(f"    {shlex.quote(str(d))}" for d in dirs), ")",
                           "RUN_DIR=${RUN_DIRS[$SLURM_ARRAY_TASK_ID]}"])
        output, what = dirs[0].parent / "slurm" / "%x-%A_%a.out", f"{len(dirs)} runs in {dirs[0].parent}"
    name = opts.job_name or f"mmtc-{dirs[0].parent.name if array else dirs[0].name}"
    if stage:
        name, what = f"{name}-{stage}", f"{what}, stage {stage}"
    # srun restates the allocation's shape: srun 22.05 does not inherit --cpus-per-task from sbatch
    srun = [*resources(opts), f"--ntasks={opts.nodes * opts.tasks}", "--kill-on-bad-exit=0", "--wait=120"]
    if opts.gpus_per_node:
        srun.append("--gpu-bind=none")
    task_args = [*(["--until-stage", until_stage] if until_stage else []),
                 *(["--allow-change", allow_change] if allow_change else [])]
    exports = [f"export {k}={shlex.quote(os.environ[k])}" for k in ("MMTC_CACHE",) if os.environ.get(k)]
    values = {
        "TITLE": f"mmtc: {what}",
        "DIRECTIVES": "\n".join(directives(opts, name, output, len(dirs) if array else 0, stage is not None)),
        "SETUP": setup, "EXPORTS": "\n".join(exports), "EXIT_PREEMPTED": str(EXIT_PREEMPTED),
        "MAX_REQUEUES": str(opts.max_requeues), "PYTHON": shlex.quote(opts.python),
        "SRUN_OPTIONS": " ".join(srun), "TASK_ARGS": "".join(" " + shlex.quote(a) for a in task_args),
    }
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        raise SlurmError(f"{TEMPLATE}: unknown placeholder near {text[text.index('{{'):][:40]!r}")
    return text


def sbatch(script: Path, dependency: str | None = None) -> str:
    """Submit; returns the job id (`sbatch --parsable` prints `ID` or `ID;CLUSTER`)."""
    cmd = ["sbatch", "--parsable", *([f"--dependency=afterok:{dependency}"] if dependency else []), str(script)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SlurmError("sbatch not found: submit from a Slurm login node, or use --dry-run") from None
    if proc.returncode != 0:
        raise SlurmError(f"sbatch {script} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]


def record_job(run_dir: Path, **record: Any) -> None:
    path = Path(run_dir) / "slurm" / "jobs.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({**record, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")


def prepare_run(run: RunDir, recipe: RecipeConfig) -> None:
    """What `mmtc run` does before training: tokenizer, cached data and summary, here and once."""
    from pipeline.data.prepare import copy_tokenizer, load_corpus, record_corpus

    corpus = load_corpus(recipe, run.tokenizer, print)
    copy_tokenizer(corpus, run.path)
    run.data_summary.write_text(json.dumps(corpus.summary, indent=1))
    record_corpus(corpus, run.corpus_record)


def submit_run(run_dir: Path, stages: Sequence[str], opts: SlurmOptions, *, dry_run: bool = False,
               allow_change: str = "") -> list[str]:
    """Write and submit the job(s) of the run in `run_dir`: one, or with `stages` one per stage
    (chained with afterok; stages already done, on a resubmission, get none). Returns the job ids."""
    from pipeline.launch.slurm_task import stage_done
    from pipeline.rundir.layout import RunDir

    run = RunDir(run_dir)
    todo = [s for s in stages if not (run.exists() and stage_done(str(run.path), s))]
    jobs: list[str | None] = list(todo) if stages else [None]
    if not jobs:
        print(f"submit: every stage of {run.path} is done already; nothing to submit", flush=True)
    ids: list[str] = []
    for i, stage in enumerate(jobs):
        # The last stage's job runs without --until-stage: the run's final evaluation belongs to it.
        until = stage if stage is not None and stage != stages[-1] else None
        path = run.path / "slurm" / (f"stage{list(stages).index(stage)}-{stage}.sbatch" if stage else "train.sbatch")
        text = render_script([run.path], opts, until_stage=until, stage=stage, allow_change=allow_change)
        dep = ids[-1] if ids else None
        if dry_run:
            print(f"# ---- {path}" + (f"  (sbatch --dependency=afterok:<job of stage {jobs[i - 1]}>)" if i else ""))
            print(text)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        job = sbatch(path, dep)
        ids.append(job)
        record_job(run.path, job_id=job, script=str(path.resolve()), stage=stage, dependency=dep)
        print(f"submitted job {job}" + (f" for stage {stage}" if stage else "")
              + (f", after job {dep}" if dep else "") + f": {path}", flush=True)
    return ids


def submit_sweep(recipe_path: str, ratios: Sequence[float], group: str, out: Path, overrides: Sequence[str],
                 opts: SlurmOptions, dry_run: bool = False) -> Path:
    """`mmtc sweep --slurm`: the sweep's runs prepared here, trained by one job array (one ratio per
    element); sweep.json is written now, so `mmtc scaling fit` works once the array is done."""
    from pipeline.curriculum.recipe import load_recipe
    from pipeline.launch.sweep import plan_sweep, run_overrides
    from pipeline.rundir.layout import RunDir
    from pipeline.rundir.lock import hold

    plan = plan_sweep(recipe_path, ratios, group, overrides)
    base = load_recipe(recipe_path, list(overrides))
    run_dirs = []
    for entry in plan:
        run_dir = out / f"ratio-{entry['ratio']:.3f}"
        entry["run_dir"] = str(run_dir)
        run_dirs.append(run_dir)
        sets = run_overrides(entry, overrides, base.train.max_steps)
        if not dry_run:
            run = RunDir(run_dir)
            recipe = load_recipe(recipe_path, sets)
            with hold(run.path):
                run.create(recipe, overwrite=False, source=recipe_path, overrides=sets)
                prepare_run(run, recipe)
    script = out / "slurm" / "sweep.sbatch"
    text = render_script(run_dirs, opts, array=True)
    path = out / "sweep.json"
    if dry_run:
        print(f"# ---- {script}\n{text}")
        return path
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"recipe": recipe_path, "group": group, "runs": plan}, indent=1))
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(text)
    job = sbatch(script)
    record_job(out, job_id=job, script=str(script), array=[str(d) for d in run_dirs])
    for i, d in enumerate(run_dirs):
        record_job(d, job_id=f"{job}_{i}", script=str(script), array_index=i)
    print(f"submitted job array {job} ({len(run_dirs)} runs): {script}", flush=True)
    return path


# -- command line ------------------------------------------------------------------------------
def add_slurm_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Slurm")
    g.add_argument("--dry-run", action="store_true", help="print the sbatch script(s); create and submit nothing")
    g.add_argument("--nodes", type=int, default=1)
    g.add_argument("--gpus-per-node", type=int, default=0, help="one task per GPU; 0: a CPU partition (gloo)")
    g.add_argument("--tasks-per-node", type=int, help="tasks (ranks) per node (default: --gpus-per-node, or 1)")
    g.add_argument("--cpus-per-task", type=int)
    for name in ("--partition", "--time", "--account", "--qos", "--job-name"):
        g.add_argument(name, help="e.g. 24:00:00 (default: the partition's limit)" if name == "--time" else None)
    g.add_argument("--signal-seconds", type=int, default=300, metavar="S",
                   help="SIGUSR1 this long before the time limit: save and requeue (default 300)")
    g.add_argument("--max-requeues", type=int, default=5, help="requeue a preempted job at most this often (default 5)")
    g.add_argument("--python", default=sys.executable, help="the Python on the compute nodes (default: this one)")
    g.add_argument("--sbatch-arg", dest="sbatch_args", action="append", default=[], metavar="ARG",
                   help="any other sbatch option, e.g. --sbatch-arg=--mem=64G (repeatable)")


def options_from_args(args: argparse.Namespace) -> SlurmOptions:
    opts = SlurmOptions(**{f.name: getattr(args, f.name) for f in fields(SlurmOptions)})
    opts.check()
    return opts


def add_submit_command(subparsers: Any) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = subparsers.add_parser(
        "submit", help="train on Slurm: prepare the run here, submit it with sbatch (requeued when preempted)")
    sub.add_argument("recipe", nargs="?", help="recipe YAML, or a name in stages/ (default: demo)")
    sub.add_argument("--run-dir", help="where the run lives (default: runs/<recipe name>)")
    sub.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    sub.add_argument("--chain-stages", action="store_true", help="one job per stage, each afterok on the last")
    mode = sub.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="submit the existing run in --run-dir (it continues)")
    mode.add_argument("--overwrite", action="store_true", help="delete --run-dir first")
    sub.add_argument("--allow-change", default="", metavar="WHAT", help="with --resume: world, corpus, recipe")
    add_slurm_arguments(sub)
    return sub


def run_submit_command(args: argparse.Namespace) -> int:
    from pipeline.curriculum.recipe import load_recipe, resolve_recipe_path
    from pipeline.rundir.layout import RunDir
    from pipeline.rundir.lock import hold

    opts = options_from_args(args)
    if args.resume:
        run = RunDir(args.run_dir or ".")
        recipe = run.load_config()  # refuses a directory that holds no run
    else:
        path = resolve_recipe_path(args.recipe)
        recipe = load_recipe(path, args.sets)
        run = RunDir(args.run_dir or Path("runs") / path.stem)
        if not args.dry_run:
            with hold(run.path):
                run.create(recipe, overwrite=args.overwrite, source=str(path), overrides=args.sets)
                print(f"run directory: {run.path}", flush=True)
                prepare_run(run, recipe)
    stages = [s.name for s in recipe.resolved_stages()] if args.chain_stages else []
    if len(stages) == 1:
        print("submit: the recipe has a single stage; --chain-stages submits one job", flush=True)
        stages = []
    submit_run(run.path, stages, opts, dry_run=args.dry_run, allow_change=args.allow_change)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.launch.slurm submit ...`: the same as `mmtc submit ...`."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.launch.slurm")
    add_submit_command(ap.add_subparsers(dest="command", required=True))
    from pipeline.rundir.layout import RunDirError
    from pipeline.rundir.lock import RunLocked

    try:
        return run_submit_command(ap.parse_args(argv))
    except (ValueError, RunDirError, RunLocked) as exc:
        print(f"mmtc: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
