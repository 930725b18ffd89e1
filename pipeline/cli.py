"""`mmtc`: the command line. It parses and dispatches; the work happens in the modules it names
(launch.local: run and resume; evaluation.commands: eval and translate; launch.slurm, launch.sweep,
report.commands, ...)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core.typed_yaml import ConfigError

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
  mmtc translate runs/x --src eng --tgt fra --input news.eng --output news.fra --nproc 2
  mmtc sweep stages/temperature_t1.yaml --out runs/sweep    # 7 ratios of lrl by default
  mmtc scaling fit runs/sweep/sweep.json      # L(p, D) per direction
  mmtc scaling solve runs/sweep/scaling_fit.json --recipe stages/demo.yaml --out stages/scaling.yaml
  mmtc doremi runs/uniform --recipe stages/demo.yaml --out stages/doremi.yaml   # proxy + averaged weights
  mmtc report runs/x                         # per-stage reports and runs/x/reports/index.html
  mmtc compare runs/a runs/b --out cmp --baseline runs/a   # runs side by side, Pareto front
  mmtc average runs/x --last 5 --out avg-last5   # then: mmtc eval runs/x --checkpoint avg-last5
  mmtc export runs/x --format hf --out models/x        # transformers' AutoModelForSeq2SeqLM loads it
  mmtc export runs/x --format ctranslate2 --quantization int8 --out models/x-ct2
  mmtc distill runs/x --corpus corpus.yaml --out distilled --nproc 2   # sequence-level KD corpus
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

    from pipeline.launch.slurm import add_slurm_arguments, add_submit_command

    add_submit_command(sub)

    st = sub.add_parser("status", help="stages done and current, step, checkpoint, monitors, last events")
    st.add_argument("run_dir")

    ev = sub.add_parser("eval", help="BLEU and chrF per direction for a run's checkpoint")
    ev.add_argument("run_dir")
    ev.add_argument("--split", choices=["dev", "test"], default="test")
    ev.add_argument("--checkpoint", help="a checkpoint tag (default: the latest committed one)")
    ev.add_argument("--beam", type=int)
    ev.add_argument("--max-sentences", type=int, help="per direction (default: all)")
    ev.add_argument("--comet", metavar="MODEL_PATH",
                    help="add COMET from a local checkpoint (needs unbabel-comet; never downloads)")

    tr = sub.add_parser("translate", help="translate lines of a file (or stdin) with a run's model, in order, streaming")
    tr.add_argument("run_dir")
    tr.add_argument("--src", required=True, help="source language code, e.g. eng")
    tr.add_argument("--tgt", required=True, help="target language code, e.g. fra")
    tr.add_argument("--input", metavar="FILE", help="one sentence per line (default: stdin)")
    tr.add_argument("--output", metavar="FILE", help="written whole at the end (default: stdout, a window at a time)")
    tr.add_argument("--beam", type=int, help="default: the recipe's eval.beam")
    tr.add_argument("--checkpoint", help="a committed tag, an averaged one included (default: the latest)")
    tr.add_argument("--nproc", type=int, default=1, help="worker processes, one per GPU where there are GPUs")
    tr.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    tr.add_argument("--batch-tokens", type=int, help="source tokens per batch (default: the recipe's eval.batch_tokens)")
    tr.add_argument("--window", type=int, default=4096,
                    help="lines read, sorted by length and batched at a time (memory is bounded by it)")
    tr.add_argument("--quiet", action="store_true", help="no progress bar (there is none off a terminal)")

    av = sub.add_parser("average", help="average K committed checkpoints into a new tag (fairseq's average_checkpoints)")
    av.add_argument("run_dir")
    pick = av.add_mutually_exclusive_group(required=True)
    pick.add_argument("--last", type=int, metavar="K", help="the K newest committed checkpoints")
    pick.add_argument("--best", type=int, metavar="K",
                      help="the K with the lowest mean dev loss (logged at their step) over --group")
    av.add_argument("--by", choices=["dev_loss", "dev_bleu"], default="dev_loss",
                    help="what --best ranks by: the dev loss logged at each checkpoint's step, or the dev BLEU "
                         "of eval/<tag>/dev.json (stage ends, or mmtc eval --split dev --checkpoint TAG)")
    av.add_argument("--group", default="all", help="a direction group (hrl, lrl, ...) or all (default)")
    av.add_argument("--out", required=True, metavar="TAG", help="the new tag's name (not starting with 'step')")

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

    from pipeline.launch.distill_args import add_distill_command

    add_distill_command(sub)
    from pipeline.export.commands import add_export_command

    add_export_command(sub)

    data = sub.add_parser("data", help="corpus tools")
    dsub = data.add_subparsers(dest="data_command", required=True)
    chk = dsub.add_parser("check", help="validate a corpus manifest (or a recipe's corpus) and print its summary")
    chk.add_argument("manifest", help="a corpus manifest YAML, or a recipe whose data.corpus names one")
    chk.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="recipe overrides when checking with the recipe's filters")
    dsub.add_parser("demo", help="build (once) and cache the Wesnoth demo corpus; print where it is")
    from pipeline.report.commands import add_report_commands

    add_report_commands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            from pipeline.launch.local import cmd_run

            return cmd_run(args)
        if args.command == "resume":
            from pipeline.launch.local import cmd_resume

            return cmd_resume(args)
        if args.command == "status":
            from pipeline.report.status import run_status
            from pipeline.rundir.layout import RunDir

            print(run_status(RunDir(args.run_dir)))
            return 0
        if args.command == "eval":
            from pipeline.evaluation.commands import cmd_eval

            return cmd_eval(args)
        if args.command == "translate":
            from pipeline.evaluation.commands import cmd_translate

            return cmd_translate(args)
        if args.command == "average":
            from pipeline.checkpoint.average import average_run

            print(average_run(args.run_dir, args.out, args.last, args.best, args.group, args.by))
            return 0
        if args.command == "export":
            from pipeline.export.commands import cmd_export

            return cmd_export(args)
        if args.command == "distill":
            from pipeline.launch.distill_run import cmd_distill

            return cmd_distill(args)
        if args.command == "data":
            from pipeline.launch.data_check import cmd_data

            return cmd_data(args)
        if args.command in ("report", "compare"):
            from pipeline.report.commands import run_report_command

            return run_report_command(args)
        if args.command == "submit":
            from pipeline.launch.slurm import run_submit_command

            return run_submit_command(args)
        if args.command == "sweep":
            from pipeline.launch.sweep import run_sweep

            ratios = [float(x) for x in args.ratios.split(",") if x]
            if args.slurm:
                from pipeline.launch.slurm import options_from_args, submit_sweep

                print(submit_sweep(args.recipe, ratios, args.group, Path(args.out), args.sets,
                                   options_from_args(args), dry_run=args.dry_run))
                return 0
            print(run_sweep(args.recipe, ratios, args.group, Path(args.out), args.sets, args.nproc))
            return 0
        if args.command == "doremi":
            from pipeline.launch.doremi_run import run_doremi

            print(run_doremi(args.reference_run, args.recipe, Path(args.out), Path(args.run_dir), args.sets,
                             args.nproc, args.eta, args.smoothing))
            return 0
        if args.command == "scaling":
            from pipeline.launch.sweep import cmd_fit, cmd_solve

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
        from pipeline.checkpoint.resume import ResumeRefused
        from pipeline.data.corpus import DataError
        from pipeline.data.demo import DemoUnavailable
        from pipeline.rundir.layout import RunDirError
        from pipeline.rundir.lock import RunLocked

        if isinstance(exc, (DataError, DemoUnavailable, RunDirError, RunLocked, FileNotFoundError, FileExistsError,
                            ResumeRefused, ValueError)):
            print(f"mmtc: {exc}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
