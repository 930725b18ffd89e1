"""`mmtc eval` and `mmtc translate`: a run's model on a split, or on lines of a file or stdin."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.data.pairs import count_lines


def _run_context(run_dir: str) -> tuple[object, object, object]:
    from pipeline.data.prepare import open_recorded
    from pipeline.rundir.layout import RunDir

    run = RunDir(run_dir)
    recipe = run.load_config()
    corpus = open_recorded(recipe, run.tokenizer, run.corpus_record, lambda _m: None)
    return run, recipe, corpus


def cmd_eval(args: argparse.Namespace) -> int:
    from pipeline.evaluation.evaluate import format_table
    from pipeline.evaluation.run_eval import evaluate_run

    scorers = []
    if args.comet:
        from pipeline.evaluation.metrics import CometScorer

        scorers.append(CometScorer(args.comet))
    run, recipe, corpus = _run_context(args.run_dir)
    if args.beam:
        recipe.eval.beam = args.beam  # type: ignore[attr-defined]
    if args.max_sentences:
        recipe.eval.max_sentences = args.max_sentences  # type: ignore[attr-defined]
    results = evaluate_run(run, corpus, recipe, split=args.split, tag=args.checkpoint,  # type: ignore[arg-type]
                           scorers=scorers)
    groups = {d.name: d.group for d in corpus.manifest.directions}  # type: ignore[attr-defined]
    print(f"checkpoint {results['checkpoint']}")
    print(format_table(results, groups))
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    import os

    import torch

    from pipeline.data.tokenizer import Tokenizer
    from pipeline.evaluation.translate_file import TranslateJob, translate_stream
    from pipeline.rundir.layout import RunDir

    run = RunDir(args.run_dir)
    tok = Tokenizer(run.tokenizer)
    if args.src not in tok.languages:
        print(f"mmtc: note: {args.src!r} is not a language of this run ({', '.join(tok.languages)})", file=sys.stderr)
    if args.tgt not in tok.languages:
        print(f"mmtc: --tgt {args.tgt}: this run has no target tag for it; its languages: "
              f"{', '.join(tok.languages)}", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    job = TranslateJob(args.run_dir, args.tgt, args.checkpoint, args.beam, args.batch_tokens, device)
    total = None
    if args.input:
        total = count_lines(Path(args.input))
    source = open(args.input, encoding="utf-8") if args.input else sys.stdin  # noqa: SIM115
    tmp = None
    if args.output:
        out_path = Path(args.output)
        tmp = out_path.with_name(f".{out_path.name}.tmp{os.getpid()}")
    sink = open(tmp, "w", encoding="utf-8") if tmp else sys.stdout  # noqa: SIM115
    try:
        counts = translate_stream(job, source, sink, args.nproc, args.window, total,
                                  progress=sys.stderr.isatty() and not args.quiet)
    finally:
        if args.input:
            source.close()
        if tmp:
            sink.close()
    if tmp:
        tmp.replace(args.output)  # the output appears whole, or not at all
    if counts["truncated"]:
        print(f"mmtc: {counts['truncated']} of {counts['lines']} lines were longer than the model's "
              "position table and were cut to fit", file=sys.stderr)
    return 0


