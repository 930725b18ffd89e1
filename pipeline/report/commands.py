"""`mmtc report` and `mmtc compare`: their arguments and their dispatch. The parser is built for
every `mmtc` command, so this module imports nothing heavy until a report is asked for (torch and
matplotlib load in a second or two)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_report_commands(sub: Any) -> None:
    """`mmtc report` and `mmtc compare` (sub: the argparse subparsers of the mmtc parser)."""
    rp = sub.add_parser("report", help="per-stage reports (JSON, Markdown) and reports/index.html for a run")
    rp.add_argument("run_dir")
    rp.add_argument("--reevaluate", action="store_true",
                    help="decode every stage-final checkpoint again, even where its evaluation is on disk")
    cp = sub.add_parser("compare", help="runs x directions, HRL/LRL averages and the Pareto front, as HTML and Markdown")
    cp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    cp.add_argument("--out", required=True, help="directory for compare.html, compare.md, compare.json and plots/")
    cp.add_argument("--baseline", metavar="RUN_DIR",
                    help="per-direction differences from this run with 95%% CIs and p-values (paired bootstrap)")
    cp.add_argument("--seeds", action="store_true", help="group runs that differ only in seed: mean ± std")
    cp.add_argument("--split", choices=["dev", "test"], default="test")  # the splits a stage report scores
    cp.add_argument("--samples", type=int, default=1000, help="bootstrap resamples (default 1000)")


def run_report_command(args: argparse.Namespace) -> int:
    from pipeline.report.compare import compare_runs
    from pipeline.report.stage_report import build_report
    from pipeline.rundir.lock import hold

    if args.command == "report":
        with hold(args.run_dir):
            path = build_report(args.run_dir, reevaluate=args.reevaluate, log=print)
        print(f"report: {path}\n  open it in a browser: file://{path.resolve()}")
        return 0
    out = compare_runs([Path(p) for p in args.run_dirs], Path(args.out), baseline=args.baseline,
                       seeds=args.seeds, split=args.split, samples=args.samples)
    print(f"comparison: {out}\n  open it in a browser: file://{out.resolve()}")
    return 0
