"""`mmtc eval` and `mmtc translate`: a run's model on a split, or on lines from stdin."""

from __future__ import annotations

import argparse
import sys


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
    from pipeline.checkpoint.weights import load_model
    from pipeline.data.tokenizer import Tokenizer
    from pipeline.evaluation.evaluate import translate_ids
    from pipeline.rundir.layout import RunDir

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
