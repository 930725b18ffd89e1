"""Step time of gradient surgery against plain training, for T = 2 (hrl/lrl groups) and T = 8
(every direction) on the demo model and corpus.

    python benchmarks/surgery_overhead.py            # writes benchmarks/results/surgery_overhead.json

Each configuration is a short `mmtc run` (same data order, batches and model); the step time is
the mean over the log intervals after the first (which holds start-up work).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from machine import hardware

CONFIGS = {
    "plain": "{method: none}",
    "pcgrad T=2": "{method: pcgrad, tasks: groups}",
    "gradvac T=2": "{method: gradvac, tasks: groups}",
    "graddrop T=2": "{method: graddrop, tasks: groups}",
    "pcgrad T=8": "{method: pcgrad, tasks: directions}",
    "gradvac T=8": "{method: gradvac, tasks: directions}",
    "graddrop T=8": "{method: graddrop, tasks: directions}",
    "target_projection T=2": "{method: target_projection, tasks: groups}",
    "target_projection T=8": "{method: target_projection, tasks: directions}",
}


def step_time(name: str, surgery: str, args: argparse.Namespace, out: Path) -> float:
    run_dir = out / name.replace(" ", "_").replace("=", "")
    sets = ["stages=[]", f"surgery={surgery}", f"train.max_steps={args.steps}", "train.log_every=10",
            "train.eval_every=0", "train.precision=fp32", "eval.splits=[]", *args.set]
    cmd = [sys.executable, "-m", "pipeline", "run", args.recipe, "--run-dir", str(run_dir), "--overwrite"]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_s"] for r in rows if "step_s" in r][1:]
    return sum(times) / len(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="stages/demo.yaml")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", default="benchmarks/work/surgery")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--results", default="benchmarks/results/surgery_overhead.json")
    ap.add_argument("--only", default="", help="comma-separated configurations; the others are kept from --results")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dest = Path(args.results)
    only = [c for c in args.only.split(",") if c]
    unknown = sorted(set(only) - set(CONFIGS))
    if unknown:
        ap.error(f"unknown configurations {unknown}; choose from {list(CONFIGS)}")
    results = json.loads(dest.read_text())["seconds_per_step"] if only and dest.is_file() else {}
    for name, s in CONFIGS.items():
        if not only or name in only:
            results[name] = step_time(name, s, args, out)
    base = results["plain"]
    print(f"{'configuration':<16}{'s/step':>9}{'× plain':>9}")
    for name, t in results.items():
        print(f"{name:<16}{t:>9.3f}{t / base:>9.2f}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"recipe": args.recipe, "steps": args.steps, "precision": "fp32",
                                "hardware": hardware(), "overrides": args.set,
                                "seconds_per_step": results, "ratio": {k: v / base for k, v in results.items()}},
                               indent=1))
    print(f"written {dest}")


if __name__ == "__main__":
    main()
