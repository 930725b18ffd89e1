"""Every balancing policy on the same model, data and step budget: final test BLEU per direction
and the trajectory of each policy's distribution.

    python benchmarks/policy_table.py --steps 400 --out benchmarks/work/policies
    python benchmarks/policy_table.py --recipe stages/demo.yaml --set data.corpus=... --steps 2000
    python benchmarks/policy_table.py --steps 1300 --only scaling_law,doremi --merge

Each policy runs as one single-stage `mmtc run` of the recipe (its stages replaced), then the
table is printed and written to benchmarks/results/policy_table.json (`--merge`: only the rows
run now are replaced, each row records the hardware it ran on).

`excess_group_dro` takes its reference losses from this table's `uniform` run under --out, and
`doremi` the same run as its reference model (DoReMi's reference is trained on the reference
mixture, uniform in the paper): train it first, or point `--reference` at any finished run of the
same corpus. `doremi` runs `mmtc doremi` (a proxy of --doremi-steps steps against the reference),
then trains with the proxy's averaged weights. `scaling_law` first runs `mmtc sweep` (short
runs at --sweep-ratios of the low-resource share, --sweep-steps each), `mmtc scaling fit` and
`mmtc scaling solve`, then trains with the solved weights; the sweep is reused when present.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from machine import hardware

POLICIES: dict[str, dict] = {
    "uniform": {"kind": "uniform"},
    "temperature_t1": {"kind": "temperature", "params": {"temperature": 1.0}},
    "temperature_t5": {"kind": "temperature", "params": {"temperature": 5.0}},
    "schedule_5to1": {"kind": "temperature_schedule", "params": {"start": 5.0, "end": 1.0, "schedule": "step"},
                      "every": 10},
    "cvar_dro": {"kind": "cvar_dro", "params": {"alpha": 0.5}, "every": 10},
    "group_dro": {"kind": "group_dro", "params": {"eta": 0.01}, "every": 10},
    "chi2_dro": {"kind": "chi2_dro", "params": {"rho": 0.05}, "every": 50},
    "exp3": {"kind": "exp3", "params": {"gamma": 0.1}, "every": 10},
    "multidds": {"kind": "multidds", "params": {"probe_tokens": 1000}, "every": 50},
    "curvature_aware": {"kind": "curvature_aware", "params": {"probe_tokens": 1000}, "every": 50},
    "chi2_dro_loss_weight": {"kind": "chi2_dro", "params": {"rho": 0.05}, "every": 50, "apply": "loss_weight"},
    "excess_group_dro": {"kind": "excess_group_dro", "params": {"eta": 0.01, "reference_from": "{reference}"},
                         "every": 10},
    "doremi": {"kind": "weights", "params": {"weights": "{doremi}"}},
    # LSSD (Huang et al. 2022) over proportional sampling (τ=1, their TED scripts' temperature), with
    # their one-to-many weights: 0.6 for "Whole" (no gate), 0.5 for "Selective" (hard gate).
    "lssd_t1": {"kind": "temperature", "params": {"temperature": 1.0},
                "distill": {"method": "lssd", "weight": 0.6, "gate": "none"}},
    "lssd_hard_t1": {"kind": "temperature", "params": {"temperature": 1.0},
                     "distill": {"method": "lssd", "weight": 0.5, "gate": "hard"}},
    # `when: always`: every direction distils from its latest best snapshot, stalled or not (at the
    # demo's budget no direction stalls before the end, so their rule distils almost never there)
    "lssd_always_t1": {"kind": "temperature", "params": {"temperature": 1.0},
                       "distill": {"method": "lssd", "weight": 0.6, "gate": "none", "when": "always"}},
    "lssd_hard_always_t1": {"kind": "temperature", "params": {"temperature": 1.0},
                            "distill": {"method": "lssd", "weight": 0.5, "gate": "hard", "when": "always"}},
    "scaling_law": {"kind": "weights", "params": {"weights": "{solved}"}},
}


def mmtc(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], check=True, capture_output=True, text=True)
    return done.stdout


def scaling_weights(args: argparse.Namespace, out: Path) -> dict[str, float]:
    """The sweep → fit → solve chain of Chen et al. (2023); its outputs stay under out/scaling_sweep."""
    sweep_dir = out / "scaling_sweep"
    sweep_json = sweep_dir / "sweep.json"
    if not sweep_json.exists():
        sets = [*args.set, f"train.max_steps={args.sweep_steps}", "eval.stage_end=false"]
        print(f"scaling_law: sweep at ratios {args.sweep_ratios}, {args.sweep_steps} steps each", flush=True)
        mmtc("sweep", args.recipe, "--ratios", args.sweep_ratios, "--out", str(sweep_dir),
             *[x for s in sets for x in ("--set", s)])
    print(mmtc("scaling", "fit", str(sweep_json)), flush=True)
    solved = sweep_dir / "scaling.yaml"
    print(mmtc("scaling", "solve", str(sweep_dir / "scaling_fit.json"), "--recipe", args.recipe,
               "--out", str(solved)), flush=True)
    return yaml.safe_load(solved.read_text())["sampling"]["params"]["weights"]


def doremi_weights(args: argparse.Namespace, out: Path) -> dict[str, float]:
    """DoReMi's proxy against the reference run, then its averaged weights (out/doremi_proxy)."""
    written = out / "doremi.yaml"
    sets = [*args.set, f"train.max_steps={args.doremi_steps}", "eval.stage_end=false", "train.log_every=25"]
    print(mmtc("doremi", args.reference or str(out / "uniform"), "--recipe", args.recipe, "--out", str(written),
               "--run-dir", str(out / "doremi_proxy"), *[x for s in sets for x in ("--set", s)]), flush=True)
    return yaml.safe_load(written.read_text())["sampling"]["params"]["weights"]


def resolve(sampling: dict, args: argparse.Namespace, out: Path) -> dict:
    """Fills the placeholders of POLICIES: the reference run and the solved or DoReMi weights."""
    params = dict(sampling.get("params", {}))
    if params.get("reference_from") == "{reference}":
        params["reference_from"] = args.reference or str(out / "uniform")
    if params.get("weights") == "{solved}":
        params["weights"] = scaling_weights(args, out)
    if params.get("weights") == "{doremi}":
        params["weights"] = doremi_weights(args, out)
    return {**sampling, "params": params}


def run_one(name: str, sampling: dict, args: argparse.Namespace, out: Path) -> dict:
    run_dir = out / name
    sampling = dict(sampling)
    distill = sampling.pop("distill", {"method": "none"})
    sets = [*args.set, "stages=[]", f"sampling={json.dumps(sampling)}", f"distill={json.dumps(distill)}",
            f"train.max_steps={args.steps}",
            f"train.eval_every={max(50, args.steps // 8)}", "train.log_every=25"]
    cmd = [sys.executable, "-m", "pipeline", "run", args.recipe, "--run-dir", str(run_dir), "--overwrite"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.time()
    if not args.collect_only:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    row = collect(name, sampling, run_dir, time.time() - t0)
    if distill["method"] != "none":
        row["distill"] = distill
    return {**row, "hardware": hardware(), "overrides": args.set}


def collect(name: str, sampling: dict, run_dir: Path, seconds: float) -> dict:
    """The table's row from a finished run directory."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "p" in r]
    marks = sorted({train[0]["step"], train[len(train) // 2]["step"], train[-1]["step"]})
    trajectory = {str(r["step"]): r.get("loss_weights", r["p"]) for r in train if r["step"] in marks}
    # Tags start with the zero-padded step: the last one holds the final weights' test scores.
    test = json.loads(sorted((run_dir / "eval").glob("*/test.json"))[-1].read_text())
    return {"policy": name, "sampling": sampling, "seconds": round(seconds, 1),
            "bleu": {k: v["bleu"] for k, v in test["directions"].items()},
            "chrf": {k: v["chrf"] for k, v in test["directions"].items()},
            "averages": test["averages"], "trajectory": trajectory}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="stages/demo.yaml")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", default="benchmarks/work/policies")
    ap.add_argument("--only", default="", help="comma-separated policy names")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--jobs", type=int, default=1,
                    help="policies trained at once (e.g. several on one GPU; give each train.threads)")
    ap.add_argument("--results", default="benchmarks/results/policy_table.json")
    ap.add_argument("--collect-only", action="store_true",
                    help="train nothing: tabulate the finished runs under --out (e.g. after resuming them)")
    ap.add_argument("--merge", action="store_true",
                    help="replace only the rows run now in --results, keep the others")
    ap.add_argument("--reference", default="",
                    help="excess_group_dro's and doremi's reference run (default: --out/uniform)")
    ap.add_argument("--doremi-steps", type=int, default=600, help="doremi: steps of the proxy run")
    ap.add_argument("--sweep-ratios", default="0.05,0.1,0.2,0.3,0.5,0.7,0.9", help="scaling_law: low-resource shares")
    ap.add_argument("--sweep-steps", type=int, default=600, help="scaling_law: steps of each sweep run")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [p for p in POLICIES if not args.only or p in args.only.split(",")]
    def one(name: str) -> dict:
        print(f"running {name} ...", flush=True)
        return run_one(name, resolve(POLICIES[name], args, out), args, out)

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(one, chosen))
    dirs = list(results[0]["bleu"])
    print(f"\ntest BLEU after {args.steps} steps ({args.recipe})")
    print(f"{'policy':<22}" + "".join(f"{d[4:]:>6}" for d in dirs) + f"{'hrl':>7}{'lrl':>7}{'all':>7}")
    for r in results:
        a = r["averages"]
        print(f"{r['policy']:<22}" + "".join(f"{r['bleu'][d]:>6.1f}" for d in dirs)
              + "".join(f"{a.get(g, {}).get('bleu', float('nan')):>7.1f}" for g in ("hrl", "lrl", "all")))
    print("\ndistribution trajectory (p at the first, middle and last log step)")
    for r in results:
        for step, p in r["trajectory"].items():
            print(f"{r['policy']:<22}{step:>6}  " + " ".join(f"{d[4:]}={p.get(d, 0):.3f}" for d in dirs))
    dest = Path(args.results)
    dest.parent.mkdir(parents=True, exist_ok=True)
    table = {"recipe": args.recipe, "steps": args.steps, "overrides": args.set, "hardware": hardware(), "results": []}
    if args.merge and dest.exists():
        table = json.loads(dest.read_text())
        if (table["recipe"], table["steps"]) != (args.recipe, args.steps):
            raise SystemExit(f"--merge: {dest} holds {table['recipe']} at {table['steps']} steps, not "
                             f"{args.recipe} at {args.steps}")
    fresh = {r["policy"] for r in results}
    table["results"] = [r for r in table["results"] if r["policy"] not in fresh] + results
    dest.write_text(json.dumps(table, indent=1))
    print(f"\nwritten {dest}")


if __name__ == "__main__":
    main()
