"""One training process: `python -m pipeline.launch.worker RUN_DIR [--resume]`, alone or under a launcher."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from pipeline.config import RecipeConfig
from pipeline.core import preemption
from pipeline.core.hostmem import keep_freed_memory
from pipeline.data.prepare import PreparedCorpus, load_corpus, open_recorded, record_corpus
from pipeline.engine.collectives import (
    Dist,
    barrier,
    broadcast_object,
    describe_peers,
    is_collective_failure,
    report_lost,
    shutdown,
)
from pipeline.engine.ds_engine import setup_distributed
from pipeline.evaluation.evaluate import format_table
from pipeline.report.stage_end import StageEndReport
from pipeline.rundir.layout import RunDir
from pipeline.train.tensorboard import TensorBoardLog
from pipeline.train.trainer import Trainer, TrainingStopped

EXIT_UNSAVED = 4  # training ended but its final checkpoint did not commit
EXIT_LOST_RANK = 5  # a collective failed: another rank died or stopped answering


def train_main(run_dir: str, resume: bool = False, corpus: PreparedCorpus | None = None,
               allow: frozenset[str] = frozenset(), until_stage: str | None = None) -> int:
    """Train (or resume) the run in `run_dir`; `corpus` saves reloading it when already in memory;
    `until_stage` stops after that stage (the final evaluation waits for the run's last stage)."""
    run = RunDir(run_dir)
    recipe = run.load_config()
    dist = setup_distributed(recipe.train.threads)
    try:
        return _train(run, recipe, dist, resume, corpus, allow, until_stage)
    except Exception as exc:
        if dist.world == 1 or not is_collective_failure(exc):
            raise
        # A peer died or hangs: say which, rather than a gloo traceback on every survivor.
        print(f"mmtc: {report_lost(exc)}", file=sys.stderr, flush=True)
        return EXIT_LOST_RANK


def _train(run: RunDir, recipe: RecipeConfig, dist: Dist, resume: bool, corpus: PreparedCorpus | None,
           allow: frozenset[str], until_stage: str | None) -> int:
    if corpus is None:
        quiet: Callable[[str], None] = lambda _msg: None  # noqa: E731
        # Rank 0 checks the files (a requeued job may find them changed) and prepares what is not
        # cached; the others then open what it recorded, reading no text.
        if dist.is_main:
            corpus = load_corpus(recipe, run.tokenizer, print)
            record_corpus(corpus, run.corpus_record)
            barrier()
        else:
            barrier()
            corpus = open_recorded(recipe, run.tokenizer, run.corpus_record, quiet)
    # After the corpus is read: keeping freed pages from here on would otherwise keep the peak of
    # reading and tokenising resident for the whole run.
    keep_freed_memory()
    preemption.install()
    if dist.is_main and dist.world > 1:
        print(f"mmtc: ranks {describe_peers()}", flush=True)
    if dist.is_main and not resume:
        for warning in recipe.budget_warnings():
            print(f"warning: {warning}", flush=True)
    trainer = Trainer(recipe, run, dist, corpus)
    trainer.on_stage_end.append(StageEndReport(run, corpus, recipe, dist))  # every rank decodes a share
    if resume:
        trainer.ckpt.restore(allow)
    restarts = os.environ.get("SLURM_RESTART_COUNT")
    if os.environ.get("SLURM_JOB_ID"):
        trainer.event("job", slurm_job_id=os.environ["SLURM_JOB_ID"], slurm_restart_count=int(restarts or 0),
                      resume=resume)
    if until_stage is not None and until_stage not in [st.name for st in trainer.stages]:
        raise ValueError(f"--until-stage {until_stage}: no such stage ({[st.name for st in trainer.stages]})")
    if dist.is_main:
        # On resume, TensorBoard hides what a killed attempt logged after the checkpoint.
        trainer.tb = TensorBoardLog(run.path, purge_step=trainer.counters.step + 1 if resume else None)
    try:
        finished = trainer.fit(until_stage)
    except TrainingStopped as exc:
        if dist.is_main:
            print(f"mmtc: {exc}", file=sys.stderr, flush=True)
        return 3
    except preemption.Preempted:
        return preemption.EXIT_PREEMPTED
    finally:
        if trainer.tb is not None:
            trainer.tb.close()
    if finished:
        final_evaluation(run, corpus, recipe, dist, trainer.final_unsaved)
    barrier()
    return EXIT_UNSAVED if trainer.final_unsaved is not None else 0


def final_evaluation(run: RunDir, corpus: PreparedCorpus, recipe: RecipeConfig, dist: Dist,
                     final_unsaved: str | None) -> None:
    """The run's last checkpoint on `eval.splits`, on every rank (each decodes a share, rank 0
    scores and prints); a split the last stage's report scored with the same weights is shown."""
    import json

    from pipeline.checkpoint import commit as ckpt
    from pipeline.evaluation.run_eval import evaluate_run

    found = None
    if dist.is_main:
        found, _ = ckpt.discover(run.checkpoints)
        if final_unsaved is not None:
            scored = f"{found.tag} (step {found.meta['step']})" if found is not None else "none"
            print(f"mmtc: the final checkpoint ({final_unsaved}) did not commit (see the save_failed "
                  f"event); the scores below are of the last committed checkpoint, {scored}, not of the final "
                  f"weights. Free space and run `mmtc resume {run.path}` to train again from there.",
                  file=sys.stderr, flush=True)
    # Rank 0 decides (the files it finds), so that every rank enters the same decodings.
    plan: list[tuple[str, str]] = []  # (split, "done" | "decode")
    if found is not None:
        for split in recipe.eval.splits:
            if split == "dev" and recipe.eval.stage_end and final_unsaved is None:
                continue  # scored at the end of the last stage already
            done = run.eval_dir(found.path.name) / f"{split}.json"
            plan.append((split, "done" if done.is_file() else "decode"))
    tag, plan = broadcast_object((found.tag if found is not None else None, plan))
    groups = {d.name: d.group for d in corpus.manifest.directions}
    for split, how in plan:
        if how == "done":
            results = json.loads((run.eval_dir(tag) / f"{split}.json").read_text()) if dist.is_main else None
        else:
            results = evaluate_run(run, corpus, recipe, split=split, tag=tag, device=dist.device, dist=dist)
        if results is not None:
            print(format_table(results, groups), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run_dir")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--allow-change", default="", help="comma-separated: world, corpus, recipe")
    ap.add_argument("--until-stage", help="stop after this stage")
    args = ap.parse_args()
    allow = frozenset(x for x in args.allow_change.split(",") if x)
    code = train_main(args.run_dir, args.resume, allow=allow, until_stage=args.until_stage)
    leave(code)


def leave(code: int) -> None:
    """Exit with `code` without the interpreter's teardown. The process group is left first, the
    normal way (barrier, destroy), except after a lost rank, whose barrier would wait for the lost
    peer. Then os._exit: at finalization a gloo worker thread can still hold work whose tensors
    keep Python references, and freeing them without a live interpreter aborts a rank that finished
    ("terminate called without an active exception", exit 134: once in CI after a complete ZeRO-2
    run, ~1 in 500 multi-rank runs; pytorch/pytorch#179291). Everything the run writes is closed or
    committed by now, and the kernel closes the run lock's descriptor."""
    if code != EXIT_LOST_RANK:
        shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
