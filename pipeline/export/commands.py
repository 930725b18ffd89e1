"""`mmtc export` and its arguments."""

from __future__ import annotations

import argparse
import sys

from pipeline.export.formats import CT2_QUANTIZATIONS, FORMATS


def add_export_command(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("export", help="a checkpoint as a Hugging Face (transformers) or CTranslate2 model directory")
    ex.add_argument("run_dir")
    ex.add_argument("--format", choices=FORMATS, required=True)
    ex.add_argument("--out", required=True, metavar="DIR", help="a new directory (never overwritten)")
    ex.add_argument("--checkpoint", metavar="TAG", help="a committed tag, an averaged one included (default: the latest)")
    ex.add_argument("--quantization", choices=CT2_QUANTIZATIONS,
                    help="ctranslate2 only: weight type (default: float32, as trained)")


def cmd_export(args: argparse.Namespace) -> int:
    try:
        from pipeline.export.export import export_ctranslate2, export_hf

        if args.format == "ctranslate2":
            import ctranslate2  # noqa: F401
    except ImportError as exc:
        print(f"mmtc: export: {exc}; install the export extra: pip install 'mmt-curriculum[export]'", file=sys.stderr)
        return 2
    if args.format == "hf":
        if args.quantization:
            print("mmtc: --quantization is for --format ctranslate2", file=sys.stderr)
            return 2
        out = export_hf(args.run_dir, args.out, args.checkpoint)
    else:
        out = export_ctranslate2(args.run_dir, args.out, args.checkpoint, args.quantization)
    print(f"wrote {out} (model card: {out / 'README.md'})")
    return 0
