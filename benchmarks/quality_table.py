"""Quality on real imbalanced data: the same model and step budget for every method on
../shared/data/tatoeba-diverse9 (English to 9 languages); test BLEU and chrF per direction, the
HRL and LRL averages, and `mmtc compare` of all runs (the HRL-vs-LRL Pareto front).

    python benchmarks/quality_table.py --steps 1500 --out benchmarks/work/quality --jobs 7
    python benchmarks/quality_table.py --collect-only --out benchmarks/work/quality

Runs for hours on a 2-core CPU; on one GPU the seven fit in about 10 minutes side by side
(--jobs 7 --set train.threads=2). Writes benchmarks/results/quality_table.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from machine import hardware

CORPUS = ["data.corpus=benchmarks/tatoeba-diverse9.yaml", "tokenizer.vocab_size=8000", "data.max_len=48"]
METHODS: dict[str, tuple[str, list[str]]] = {
    "t1": ("stages/temperature_t1.yaml", []),
    "t5": ("stages/temperature_t5.yaml", []),
    "two_stage": ("stages/two_stage.yaml", []),
    "cooldown": ("stages/cooldown.yaml", []),
    "chi2_dro": ("stages/temperature_t5.yaml", ["sampling={kind: chi2_dro, params: {rho: 0.05}, every: 50}"]),
    "multidds": ("stages/temperature_t5.yaml",
                 ["sampling={kind: multidds, params: {lr: 0.05, probe_tokens: 1000}, every: 50}"]),
    "pcgrad": ("stages/temperature_t5.yaml", ["surgery={method: pcgrad, tasks: groups}", "train.precision=amp_bf16"]),
    # LSSD (Huang et al. 2022) over τ=1, their TED scripts' temperature, with their one-to-many
    # weights (0.6 no gate, "Whole"; 0.5 hard gate, "Selective") and their rule (`when: stalled`)
    "lssd": ("stages/temperature_t1.yaml", ["distill={method: lssd, weight: 0.6, gate: none}"]),
    "lssd_hard": ("stages/temperature_t1.yaml", ["distill={method: lssd, weight: 0.5, gate: hard}"]),
}


def train(name: str, args: argparse.Namespace) -> None:
    recipe, extra = METHODS[name]
    cmd = [sys.executable, "-m", "pipeline", "run", recipe, "--run-dir", str(Path(args.out) / name), "--overwrite"]
    for s in [*CORPUS, f"train.max_steps={args.steps}", *extra, *args.set]:
        cmd += ["--set", s]
    with open(Path(args.out) / f"{name}.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)


def row(name: str, run_dir: Path) -> dict | None:
    evals = sorted((run_dir / "eval").glob("*/test.json"))
    if not evals:
        return None
    test = json.loads(evals[-1].read_text())
    return {"method": name, "checkpoint": evals[-1].parent.name,
            "bleu": {k: v["bleu"] for k, v in test["directions"].items()},
            "chrf": {k: v["chrf"] for k, v in test["directions"].items()}, "averages": test["averages"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--out", default="benchmarks/work/quality")
    ap.add_argument("--only", default="", help="comma-separated method names")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--collect-only", action="store_true", help="tabulate the finished runs under --out")
    ap.add_argument("--hardware", default=None, help="what the runs trained on (default: this machine)")
    ap.add_argument("--results", default="benchmarks/results/quality_table.json")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [m for m in METHODS if not args.only or m in args.only.split(",")]
    if not args.collect_only:
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            list(pool.map(lambda m: train(m, args), chosen))
    rows = {m: row(m, out / m) for m in chosen}
    done = [r for r in rows.values() if r]
    missing = [m for m, r in rows.items() if r is None]
    dirs = list(done[0]["bleu"])
    print(f"test BLEU / chrF after {args.steps} steps; hrl = deu fra mar")
    print(f"{'method':<11}" + "".join(f"{d[4:]:>11}" for d in dirs) + f"{'HRL':>11}{'LRL':>11}")
    for r in done:
        a = r["averages"]
        print(f"{r['method']:<11}" + "".join(f"{r['bleu'][d]:>5.1f}/{r['chrf'][d]:<5.1f}" for d in dirs)
              + "".join(f"{a[g]['bleu']:>5.1f}/{a[g]['chrf']:<5.1f}" for g in ("hrl", "lrl")))
    if missing:
        print(f"not finished (no test evaluation): {', '.join(missing)}")
    compare = out / "compare"
    done_compare = subprocess.run([sys.executable, "-m", "pipeline", "compare", *[str(out / r["method"]) for r in done],
                                   "--out", str(compare), "--baseline", str(out / done[0]["method"])])
    # mmtc compare refuses runs scored on different test sets; the table is still written.
    compared = str(compare / "compare.md") if done_compare.returncode == 0 else None
    dest = Path(args.results)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"steps": args.steps, "overrides": [*CORPUS, *args.set],
                                "hardware": args.hardware or hardware(), "results": done, "not_finished": missing,
                                "compare": compared}, indent=1))
    print(f"written {dest} and {compare}/compare.html")


if __name__ == "__main__":
    main()
