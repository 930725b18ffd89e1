"""Peak memory per rank with 2 processes for ZeRO 0, 1, 2, 3 and ZeRO-3 with CPU offload, and the
saving against ZeRO 0.

    python benchmarks/zero_memory.py                  # the `base` preset (53M parameters), fp32
    python benchmarks/zero_memory.py --preset big --steps 10

Each configuration is a short 2-process `mmtc run` of the demo recipe (single stage, no evaluation);
the trainer logs every rank's resident and peak host memory (and, on GPUs, peak allocated GPU memory)
at each log step. On a CPU machine the host figure holds parameters, gradients and optimizer state
together, plus what the process holds anyway (torch, the corpus): compare the differences, not the
totals.
Writes benchmarks/results/zero_memory.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from machine import hardware

CONFIGS = ["zero0", "zero1", "zero2", "zero3", "zero3_offload"]


def peak(name: str, args: argparse.Namespace, out: Path) -> dict[str, list[float]]:
    run_dir = out / name
    sets = ["stages=[]", f"deepspeed.config={name}", f"model.preset={args.preset}", f"train.max_steps={args.steps}",
            f"train.log_every={args.steps}", "train.eval_every=0", "eval.splits=[]", "eval.stage_end=false",
            f"train.precision={args.precision}", *args.set]
    cmd = [sys.executable, "-m", "pipeline", "run", args.recipe, "--run-dir", str(run_dir), "--overwrite",
           "--nproc", "2"]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "peak_host_mb" in r][-1]
    return {k: last[k] for k in ("host_mb", "peak_host_mb", "peak_gpu_mb") if k in last}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="stages/demo.yaml")
    ap.add_argument("--preset", default="base")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/work/zero_memory")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--results", default="benchmarks/results/zero_memory.json")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {name: peak(name, args, out) for name in CONFIGS}
    # On GPUs the peak allocation; on a CPU the resident size after the last step (the host peak
    # is set by start-up copies, not by what each ZeRO stage keeps).
    key = "peak_gpu_mb" if "peak_gpu_mb" in results["zero0"] else "host_mb"
    base = max(results["zero0"][key])
    print(f"{args.preset}, {args.precision}, 2 processes: {key} per rank")
    print(f"{'config':<15}{'rank 0':>10}{'rank 1':>10}{'saving':>10}")
    for name, r in results.items():
        print(f"{name:<15}{r[key][0]:>10.0f}{r[key][1]:>10.0f}{base - max(r[key]):>10.0f}")
    dest = Path(args.results)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"preset": args.preset, "precision": args.precision, "steps": args.steps,
                                "hardware": hardware(), "measure": key, "results": results}, indent=1))
    print(f"written {dest}")


if __name__ == "__main__":
    main()
