"""`mmtc run` and `mmtc resume` on this machine: the run directory's lock, the recipe (and the
refusal of changes on resume), the data prepared once here, then training in this process or in
`--nproc` local processes (pipeline/launch/local_ranks.py, with Ctrl-C passed to the workers)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.config import RecipeConfig
from pipeline.core.hostinfo import slow_cpu_bf16_note
from pipeline.launch.local_ranks import launch
from pipeline.rundir.layout import RunDir


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.curriculum.recipe import load_recipe, resolve_recipe_path
    from pipeline.rundir.layout import RunDir
    from pipeline.rundir.lock import hold

    path = resolve_recipe_path(args.recipe)
    recipe = load_recipe(path, args.sets)
    run = RunDir(args.run_dir or Path("runs") / path.stem)
    allow = parse_allow(args.allow_change)
    if args.allow_change and not args.resume:
        print("mmtc: --allow-change goes with --resume", file=sys.stderr)
        return 2
    if args.resume and not run.exists():
        print(f"mmtc: --resume: {run.path} holds no run", file=sys.stderr)
        return 2
    with hold(run.path):
        if args.resume:
            if args.sets:
                apply_overrides(run, args.sets, allow)
            return start(run, run.load_config(), args.nproc, True, allow)
        fresh = run.is_empty()
        run.create(recipe, overwrite=args.overwrite, source=str(path), overrides=args.sets)
        return start(run, recipe, args.nproc, False, fresh=fresh or args.overwrite)


def parse_allow(text: str) -> set[str]:
    from pipeline.checkpoint.resume import CHANGES

    allow = {x for x in text.split(",") if x}
    unknown = allow - set(CHANGES)
    if unknown:
        raise ValueError(f"--allow-change: unknown {sorted(unknown)}; choose from {', '.join(CHANGES)}")
    return allow


def apply_overrides(run: RunDir, sets: list[str], allow: set[str]) -> None:
    """`--set` on a resume changes the saved recipe: refused like any changed recipe unless
    allowed; the trainer records an allowed change when it restores (event and run.json)."""
    from pipeline.checkpoint.resume import ResumeRefused, diff_plain
    from pipeline.config import recipe_to_plain
    from pipeline.curriculum.recipe import load_recipe

    new = load_recipe(run.config, sets)
    changes = diff_plain(recipe_to_plain(run.load_config()), recipe_to_plain(new))
    if not changes:
        return
    if "recipe" not in allow:
        raise ResumeRefused(f"refusing to resume {run.path} with --set: the recipe would change:\n  - "
                            + "\n  - ".join(changes) + "\nPass --allow-change recipe to resume with the change "
                            "(recorded as a recipe_changed event and in run.json). Nothing was changed.")
    run.write_config(new)


def start(run: RunDir, recipe: RecipeConfig, nproc: int, resume: bool, allow: set[str] | None = None,
          fresh: bool = False) -> int:
    """Prepare the data here, before any worker starts (errors surface once, workers hit the
    cache), then train in this process or in `nproc` launched ones. A fresh run whose data
    fails to prepare is removed again, so the same command can be retried."""
    import torch

    from pipeline.data.prepare import copy_tokenizer, load_corpus, record_corpus
    from pipeline.engine.collectives import shutdown
    from pipeline.launch.worker import train_main

    print(f"run directory: {run.path}", flush=True)
    note = slow_cpu_bf16_note(recipe.train.precision, on_gpu=torch.cuda.is_available())
    if note:
        print(f"mmtc: warning: {note}", file=sys.stderr, flush=True)
    try:
        corpus = load_corpus(recipe, run.tokenizer, print)
        copy_tokenizer(corpus, run.path)
        run.data_summary.write_text(json.dumps(corpus.summary, indent=1))
        record_corpus(corpus, run.corpus_record)
    except BaseException:
        if fresh:
            run.clear()
        raise
    allow = allow or set()
    if nproc <= 1:
        try:
            return train_main(str(run.path), resume=resume, corpus=corpus, allow=frozenset(allow))
        finally:
            shutdown()  # while the interpreter is alive: see worker.leave
    return launch(run.path, nproc, resume, ",".join(sorted(allow)))


def cmd_resume(args: argparse.Namespace) -> int:
    from pipeline.rundir.layout import RunDir
    from pipeline.rundir.lock import hold

    run = RunDir(args.run_dir)
    if not run.exists():
        print(f"mmtc: {run.path} holds no run", file=sys.stderr)
        return 2
    allow = parse_allow(args.allow_change)
    with hold(run.path):
        if args.from_stage:
            from pipeline.launch.attempts import rewind_to_stage

            archive, tag = rewind_to_stage(run, args.from_stage)
            print(f"resume: the earlier attempt is kept in {archive}; restarting stage {args.from_stage} from {tag}")
            allow.add("recipe")  # a redone stage is a new attempt: its recipe may change (recorded)
        if args.sets:
            apply_overrides(run, args.sets, allow)
        return start(run, run.load_config(), args.nproc, True, allow)
