"""`mmtc`: the command line. It parses, checks, and calls; the work happens in the modules it names."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .typed_yaml import ConfigError

if TYPE_CHECKING:
    from .config import RecipeConfig
    from .rundir import RunDir

EPILOG = """examples:
  mmtc run                                   # the demo recipe on the embedded demo corpus
  mmtc run stages/demo.yaml --run-dir runs/x --set train.max_steps=200
  mmtc run my_recipe.yaml --nproc 2          # 2 local processes (DeepSpeed launcher underneath)
  mmtc resume runs/x                         # continue exactly where the run stopped
  mmtc submit stages/two_stage.yaml --run-dir runs/x --nodes 2 --gpus-per-node 8 --partition gpu --time 24:00:00
  mmtc submit stages/two_stage.yaml --run-dir runs/x --chain-stages ...   # one Slurm job per stage (afterok)
  mmtc resume runs/x --from-stage mix --set stages.1.sampling.params.temperature=2
  mmtc status runs/x                         # stages, step, checkpoint, monitors, last events
  mmtc eval runs/x --split test              # BLEU and chrF per direction
  echo "Where is the station?" | mmtc translate runs/x --src eng --tgt fra
  mmtc sweep stages/temperature_t1.yaml --out runs/sweep    # 7 ratios of lrl by default
  mmtc scaling fit runs/sweep/sweep.json      # L(p, D) per direction
  mmtc scaling solve runs/sweep/scaling_fit.json --recipe stages/demo.yaml --out stages/scaling.yaml
  mmtc doremi runs/uniform --recipe stages/demo.yaml --out stages/doremi.yaml   # proxy + averaged weights
  mmtc report runs/x                         # per-stage reports and runs/x/reports/index.html
  mmtc compare runs/a runs/b --out cmp --baseline runs/a   # runs side by side, Pareto front
  mmtc data check corpus.yaml                # validate a corpus manifest and print its summary
  mmtc data demo                             # build (and cache) the embedded demo corpus
"""


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mmt-curriculum")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mmtc", description="Multilingual MT training with curricula and balancing, on DeepSpeed.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"mmtc {package_version()}")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train a recipe (default: stages/demo.yaml), then evaluate")
    run.add_argument("recipe", nargs="?", help="recipe YAML, or a name in stages/ (default: demo)")
    run.add_argument("--run-dir", help="where the run lives (default: runs/<recipe name>)")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="override a recipe key, e.g. --set train.max_steps=200 (repeatable)")
    run.add_argument("--nproc", type=int, default=1, help="local processes (DeepSpeed launcher when > 1)")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    mode.add_argument("--overwrite", action="store_true", help="delete --run-dir first")
    run.add_argument("--allow-change", default="", metavar="WHAT",
                     help="with --resume: resume although these differ from the checkpoint: world, corpus, recipe")

    res = sub.add_parser("resume", help="continue a run exactly where it stopped, or redo a stage")
    res.add_argument("run_dir")
    res.add_argument("--from-stage", metavar="NAME",
                     help="start stage NAME again from the previous stage's final checkpoint (the old attempt is kept)")
    res.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="change the recipe: refused (differences listed) unless --allow-change recipe or "
                          "--from-stage; an allowed change is recorded (event and run.json)")
    res.add_argument("--nproc", type=int, default=1)
    res.add_argument("--allow-change", default="", metavar="WHAT",
                     help="resume although these differ from the checkpoint: world, corpus, recipe (comma-separated)")

    from .slurm import add_slurm_arguments, add_submit_command

    add_submit_command(sub)

    st = sub.add_parser("status", help="stages done and current, step, checkpoint, monitors, last events")
    st.add_argument("run_dir")

    ev = sub.add_parser("eval", help="BLEU and chrF per direction for a run's checkpoint")
    ev.add_argument("run_dir")
    ev.add_argument("--split", choices=["dev", "test"], default="test")
    ev.add_argument("--checkpoint", help="a checkpoint tag (default: the latest committed one)")
    ev.add_argument("--beam", type=int)
    ev.add_argument("--max-sentences", type=int, help="per direction (default: all)")

    tr = sub.add_parser("translate", help="translate lines from stdin with a run's model")
    tr.add_argument("run_dir")
    tr.add_argument("--src", required=True, help="source language code, e.g. eng")
    tr.add_argument("--tgt", required=True, help="target language code, e.g. fra")
    tr.add_argument("--beam", type=int)
    tr.add_argument("--checkpoint")

    sw = sub.add_parser("sweep", help="short runs at several sampling ratios (for the scaling law and the Pareto front)")
    sw.add_argument("recipe")
    sw.add_argument("--ratios", default="0.05,0.1,0.2,0.3,0.5,0.7,0.9",
                    help="comma-separated probabilities of --group (default: 7 ratios, the fewest for the "
                         "scaling law's leave-one-out error)")
    sw.add_argument("--group", default="lrl", help="the group whose share is swept (default lrl)")
    sw.add_argument("--out", required=True, help="directory for the runs and sweep.json")
    sw.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    sw.add_argument("--nproc", type=int, default=1)
    sw.add_argument("--slurm", action="store_true", help="submit the runs as one Slurm job array (see the Slurm options)")
    add_slurm_arguments(sw)

    sc = sub.add_parser("scaling", help="fit the scaling law to a sweep, and solve for the weights")
    scs = sc.add_subparsers(dest="scaling_command", required=True)
    fit = scs.add_parser("fit", help="fit L(p) = a p^-α + b p^β + M∞ per direction to a sweep's final dev losses")
    fit.add_argument("sweep_json", help="sweep.json written by mmtc sweep")
    fit.add_argument("--out", help="default: scaling_fit.json beside sweep.json")
    sol = scs.add_parser("solve", help="p = argmin Σ r_i L_i(p_i) on the simplex; optionally write a recipe")
    sol.add_argument("fit_json")
    sol.add_argument("--importance", default="", help="r_i per direction, e.g. eng-bos=2,eng-deu=1 (default equal)")
    sol.add_argument("--recipe", help="recipe to copy with these weights")
    sol.add_argument("--out", help="where to write the new recipe")
    sol.add_argument("--extrapolate", action="store_true",
                     help="search the whole simplex (default: each p_i within the ratios its sweep tried)")

    dr = sub.add_parser("doremi", help="DoReMi: train a proxy against a reference run, write its averaged weights "
                                       "as a static-weights recipe")
    dr.add_argument("reference_run", help="the reference model's run directory (same corpus and tokenizer)")
    dr.add_argument("--recipe", required=True, help="the recipe the proxy trains with (its stages are replaced)")
    dr.add_argument("--out", required=True, help="where to write the recipe with the averaged weights")
    dr.add_argument("--run-dir", default="runs/doremi-proxy", help="the proxy's run directory")
    dr.add_argument("--eta", type=float, default=1.0, help="step size of the weight update (the paper: 1)")
    dr.add_argument("--smoothing", type=float, default=1e-3, help="mixing with uniform, c (the paper: 1e-3)")
    dr.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    dr.add_argument("--nproc", type=int, default=1)

    data = sub.add_parser("data", help="corpus tools")
    dsub = data.add_subparsers(dest="data_command", required=True)
    chk = dsub.add_parser("check", help="validate a corpus manifest (or a recipe's corpus) and print its summary")
    chk.add_argument("manifest", help="a corpus manifest YAML, or a recipe whose data.corpus names one")
    chk.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="recipe overrides when checking with the recipe's filters")
    dsub.add_parser("demo", help="build (once) and cache the Wesnoth demo corpus; print where it is")
    from .compare import add_report_commands

    add_report_commands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "resume":
            return cmd_resume(args)
        if args.command == "status":
            from .rundir import RunDir
            from .status import run_status

            print(run_status(RunDir(args.run_dir)))
            return 0
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "translate":
            return cmd_translate(args)
        if args.command == "data":
            return cmd_data(args)
        if args.command in ("report", "compare"):
            from .compare import run_report_command

            return run_report_command(args)
        if args.command == "submit":
            from .slurm import run_submit_command

            return run_submit_command(args)
        if args.command == "sweep":
            from .sweep import run_sweep

            ratios = [float(x) for x in args.ratios.split(",") if x]
            if args.slurm:
                from .slurm import options_from_args, submit_sweep

                print(submit_sweep(args.recipe, ratios, args.group, Path(args.out), args.sets,
                                   options_from_args(args), dry_run=args.dry_run))
                return 0
            print(run_sweep(args.recipe, ratios, args.group, Path(args.out), args.sets, args.nproc))
            return 0
        if args.command == "doremi":
            from .doremi_run import run_doremi

            print(run_doremi(args.reference_run, args.recipe, Path(args.out), Path(args.run_dir), args.sets,
                             args.nproc, args.eta, args.smoothing))
            return 0
        if args.command == "scaling":
            from .sweep import cmd_fit, cmd_solve

            if args.scaling_command == "fit":
                print(cmd_fit(Path(args.sweep_json), Path(args.out) if args.out else None))
            else:
                imp = {k: float(v) for k, v in (x.split("=") for x in args.importance.split(",") if x)}
                print(cmd_solve(Path(args.fit_json), imp, args.recipe, Path(args.out) if args.out else None,
                                args.extrapolate))
            return 0
    except ConfigError as exc:
        print(f"mmtc: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Before training starts (nothing to save yet), or a second Ctrl-C while a save was under way.
        print("mmtc: interrupted; nothing was saved after the last committed checkpoint", file=sys.stderr)
        return 130
    except Exception as exc:
        from .checkpointing import ResumeRefused
        from .data.corpus import DataError
        from .data.demo import DemoUnavailable
        from .rundir import RunDirError
        from .runlock import RunLocked

        if isinstance(exc, (DataError, DemoUnavailable, RunDirError, RunLocked, FileNotFoundError, ResumeRefused, ValueError)):
            print(f"mmtc: {exc}", file=sys.stderr)
            return 2
        raise
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .recipes import load_recipe, resolve_recipe_path
    from .rundir import RunDir
    from .runlock import hold

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
        fresh = not run.path.exists() or not any(p.name != ".lock" for p in run.path.iterdir())
        run.create(recipe, overwrite=args.overwrite, source=str(path), overrides=args.sets)
        return start(run, recipe, args.nproc, False, fresh=fresh or args.overwrite)


def parse_allow(text: str) -> set[str]:
    from .checkpointing import CHANGES

    allow = {x for x in text.split(",") if x}
    unknown = allow - set(CHANGES)
    if unknown:
        raise ValueError(f"--allow-change: unknown {sorted(unknown)}; choose from {', '.join(CHANGES)}")
    return allow


def apply_overrides(run: RunDir, sets: list[str], allow: set[str]) -> None:
    """`--set` on a resume changes the saved recipe: refused like any changed recipe unless
    allowed; the trainer records an allowed change when it restores (event and run.json)."""
    from .checkpointing import ResumeRefused, diff_plain
    from .config import recipe_to_plain
    from .recipes import load_recipe

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
    from .data.prepare import copy_tokenizer, load_corpus
    from .worker import train_main

    print(f"run directory: {run.path}", flush=True)
    try:
        corpus = load_corpus(recipe, run.tokenizer, print)
        copy_tokenizer(corpus, run.path)
        run.data_summary.write_text(json.dumps(corpus.summary, indent=1))
    except BaseException:
        if fresh:
            run.remove_new()
        raise
    allow = allow or set()
    if nproc <= 1:
        return train_main(str(run.path), resume=resume, corpus=corpus, allow=frozenset(allow))
    return launch(run.path, nproc, resume, ",".join(sorted(allow)))


def cmd_resume(args: argparse.Namespace) -> int:
    from .rundir import RunDir
    from .runlock import hold

    run = RunDir(args.run_dir)
    if not run.exists():
        print(f"mmtc: {run.path} holds no run", file=sys.stderr)
        return 2
    allow = parse_allow(args.allow_change)
    with hold(run.path):
        if args.from_stage:
            from .attempts import rewind_to_stage

            archive, tag = rewind_to_stage(run, args.from_stage)
            print(f"resume: the earlier attempt is kept in {archive}; restarting stage {args.from_stage} from {tag}")
            allow.add("recipe")  # a redone stage is a new attempt: its recipe may change (recorded)
        if args.sets:
            apply_overrides(run, args.sets, allow)
        return start(run, run.load_config(), args.nproc, True, allow)


def launch(run_dir: Path, nproc: int, resume: bool, allow: str = "") -> int:
    """Start `nproc` local workers through DeepSpeed's launcher (it sets RANK, WORLD_SIZE, ...)."""
    from .collectives import free_port

    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc),
           "--master_port", str(free_port()), "--no_local_rank", "--module", "pipeline.worker", str(run_dir)]
    if resume:
        cmd += ["--resume", "--allow-change", allow]
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # The launcher runs in its own session, so a Ctrl-C reaches this process alone; it is passed to
    # the workers, which finish the step, save and exit 85 (DeepSpeed's launcher would kill them).
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        import psutil

        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if "pipeline.worker" in " ".join(child.cmdline()):
                    child.send_signal(signum)
            except psutil.Error:
                pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _run_context(run_dir: str) -> tuple[object, object, object]:
    from .data.prepare import load_corpus
    from .rundir import RunDir

    run = RunDir(run_dir)
    recipe = run.load_config()
    corpus = load_corpus(recipe, run.tokenizer, lambda _m: None)
    return run, recipe, corpus


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import format_table
    from .evaluation_run import evaluate_run

    run, recipe, corpus = _run_context(args.run_dir)
    if args.beam:
        recipe.eval.beam = args.beam  # type: ignore[attr-defined]
    if args.max_sentences:
        recipe.eval.max_sentences = args.max_sentences  # type: ignore[attr-defined]
    results = evaluate_run(run, corpus, recipe, split=args.split, tag=args.checkpoint)  # type: ignore[arg-type]
    groups = {d.name: d.group for d in corpus.manifest.directions}  # type: ignore[attr-defined]
    print(f"checkpoint {results['checkpoint']}")
    print(format_table(results, groups))
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    from .evaluate import translate_ids
    from .rundir import RunDir
    from .tokenizer import Tokenizer
    from .weights import load_model

    run = RunDir(args.run_dir)
    recipe = run.load_config()
    tok = Tokenizer(run.tokenizer)
    if args.beam:
        recipe.eval.beam = args.beam
    model, _ = load_model(run, recipe, tok.vocab_size, tok.pad_id, args.checkpoint)
    if args.src not in tok.languages:
        print(f"mmtc: note: {args.src!r} is not a language of this run ({', '.join(tok.languages)})", file=sys.stderr)
    if args.tgt not in tok.languages:
        print(f"mmtc: --tgt {args.tgt}: this run has no target tag for it; its languages: "
              f"{', '.join(tok.languages)}", file=sys.stderr)
        return 2
    tag_id = tok.tag_id(args.tgt)
    lines = [line.rstrip("\n") for line in sys.stdin]
    ids = tok.encode([line.strip() for line in lines])
    hyps = translate_ids(model, ids, tag_id, tok, recipe.eval, model_device(model))
    for h in tok.decode_batch(hyps):
        print(h)
    return 0


def model_device(model: object) -> object:
    import torch

    assert isinstance(model, torch.nn.Module)
    return next(model.parameters()).device


def cmd_data(args: argparse.Namespace) -> int:
    from .config import DataConfig

    if args.data_command == "demo":
        from .data.demo import build_demo_corpus
        from .data.prepare import cache_root

        path = build_demo_corpus(cache_root(DataConfig()), log=print)
        print(f"demo corpus manifest: {path}")
        return 0
    from .data.check import check_manifest

    print(check_manifest(args.manifest, args.sets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
