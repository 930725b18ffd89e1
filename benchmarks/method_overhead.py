"""Step time of each weighting policy, of gradient surgery for T = 2 (hrl/lrl groups) and
T = 8 (every direction), and of LSSD's teacher forward, against plain training on the demo model
and corpus.

    python benchmarks/method_overhead.py --group policies   # writes benchmarks/results/policy_overhead.json
    python benchmarks/method_overhead.py --group surgery    # writes benchmarks/results/surgery_overhead.json
    python benchmarks/method_overhead.py --group distill    # writes benchmarks/results/distill_overhead.json

Each configuration is a short `mmtc run` (same data order, batches and model; each group times its
own plain run); the step time is the mean over the log intervals after the first (which holds
start-up work), so a policy that updates every K steps is charged its update amortised over K.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from machine import hardware


def surgery(spec: str) -> str:
    return f"surgery={spec}"


def sampling(spec: str) -> str:
    return f"sampling={spec}"


PLAIN = sampling("{kind: temperature, params: {temperature: 5.0}}")
# LSSD: both runs evaluate every 10 steps (step times exclude evaluations); `when: always` makes
# every direction distil from step 11 on, the worst case (their `stalled` rule distils less).
EVAL10 = "train.eval_every=10"
LSSD = "distill={method: lssd, when: always"
GROUPS: dict[str, dict[str, str | list[str]]] = {
    "distill": {
        "plain": [PLAIN, EVAL10],
        "lssd": [PLAIN, EVAL10, LSSD + "}"],
        "lssd hard": [PLAIN, EVAL10, LSSD + ", gate: hard}"],
        "lssd soft sentence": [PLAIN, EVAL10, LSSD + ", gate: soft, level: sentence}"],
        "lssd fp32 snapshots": [PLAIN, EVAL10, LSSD + ", snapshot_dtype: fp32}"],
    },
    "surgery": {
        "plain": PLAIN,
        "pcgrad T=2": surgery("{method: pcgrad, tasks: groups}"),
        "gradvac T=2": surgery("{method: gradvac, tasks: groups}"),
        "graddrop T=2": surgery("{method: graddrop, tasks: groups}"),
        "pcgrad T=8": surgery("{method: pcgrad, tasks: directions}"),
        "gradvac T=8": surgery("{method: gradvac, tasks: directions}"),
        "graddrop T=8": surgery("{method: graddrop, tasks: directions}"),
        "target_projection T=2": surgery("{method: target_projection, tasks: groups}"),
        "target_projection T=8": surgery("{method: target_projection, tasks: directions}"),
    },
    # The cadences of benchmarks/policy_table.py, so these are the overheads of those rows.
    "policies": {
        "plain": PLAIN,
        "schedule_5to1": sampling("{kind: temperature_schedule, params: {start: 5.0, end: 1.0, schedule: step}, "
                                  "every: 10}"),
        "cvar_dro": sampling("{kind: cvar_dro, params: {alpha: 0.5}, every: 10}"),
        "group_dro": sampling("{kind: group_dro, params: {eta: 0.01}, every: 10}"),
        "excess_group_dro": sampling("{kind: excess_group_dro, params: {eta: 0.01, reference: {eng-deu: 5.0}}, every: 10}"),
        "chi2_dro": sampling("{kind: chi2_dro, params: {rho: 0.05}, every: 50}"),
        "chi2_dro loss_weight": sampling("{kind: chi2_dro, params: {rho: 0.05}, every: 50, apply: loss_weight}"),
        "exp3": sampling("{kind: exp3, params: {gamma: 0.1}, every: 10}"),
        "multidds": sampling("{kind: multidds, params: {lr: 0.05, probe_tokens: 1000}, every: 50}"),
        "curvature_aware": sampling("{kind: curvature_aware, params: {probe_tokens: 1000}, every: 50}"),
    },
}


RESULTS = {"surgery": "benchmarks/results/surgery_overhead.json", "policies": "benchmarks/results/policy_overhead.json",
           "distill": "benchmarks/results/distill_overhead.json"}


def step_time(name: str, setting: str | list[str], every: int | None, args: argparse.Namespace,
              out: Path) -> tuple[float, float | None]:
    """Mean seconds per step after the first log interval, and the seconds per update a gradient
    probe measured itself (`probe_s` of metrics.jsonl; None for policies without a probe)."""
    run_dir = out / args.group / name.replace(" ", "_").replace("=", "")
    sets = ["stages=[]", f"train.max_steps={args.steps}", "train.log_every=10", "train.eval_every=0",
            f"train.precision={args.precision}", "eval.splits=[]", "eval.stage_end=false",
            *([setting] if isinstance(setting, str) else setting), *args.set]
    cmd = [sys.executable, "-m", "pipeline", "run", args.recipe, "--run-dir", str(run_dir), "--overwrite"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        print(f"{name}: `mmtc run` failed (exit {proc.returncode}); its output's end:\n{proc.stdout[-4000:]}")
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_s"] for r in rows if "step_s" in r][1:]
    probe = [r["probe_s"] for r in rows if "probe_s" in r]
    updates = args.steps // every if every else 0
    return sum(times) / len(times), (sum(probe) / updates if probe and updates else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="stages/demo.yaml")
    ap.add_argument("--group", choices=sorted(GROUPS), default="surgery")
    ap.add_argument("--steps", type=int, default=0,
                    help="steps per run (default 60 for surgery; 110 for policies: past two updates of the every-50 ones)")
    ap.add_argument("--out", default="benchmarks/work/overhead")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--results", default="", help="default: benchmarks/results/<group>_overhead.json")
    ap.add_argument("--only", default="", help="comma-separated configurations; the others are kept from --results")
    args = ap.parse_args()
    CONFIGS = GROUPS[args.group]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dest = Path(args.results or RESULTS[args.group])
    args.steps = args.steps or {"surgery": 60, "policies": 110, "distill": 60}[args.group]
    only = [c for c in args.only.split(",") if c]
    unknown = sorted(set(only) - set(CONFIGS))
    if unknown:
        ap.error(f"unknown configurations {unknown}; choose from {list(CONFIGS)}")
    kept = json.loads(dest.read_text()) if only and dest.is_file() else {}
    results = kept.get("seconds_per_step", {})
    probed = kept.get("probe_seconds_per_update", {})
    every = {k: int(m.group(1)) for k, v in CONFIGS.items() if (m := re.search(r"every: (\d+)", str(v)))}

    def save() -> dict[str, float]:
        """Writes what is measured so far (after each configuration: a run cut short by a time
        limit keeps the configurations it finished); returns the extra seconds per update."""
        base = results["plain"]
        # A policy's extra time per update (its cadence × the amortised extra per step), and what that
        # comes to at a paper's cadence (MultiDDS: every 1,000 steps).
        # A probe's own timing is exact where the step-time difference carries the runs' noise (about
        # 10% of a step, times the cadence): it is the bulk of the extra per update wherever a policy has one.
        per_update = {k: probed.get(k, (results[k] - base) * every[k]) for k in results if k in every}
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps({"recipe": args.recipe, "steps": args.steps, "precision": args.precision,
                                    "hardware": hardware(), "overrides": args.set,
                                    "seconds_per_step": results, "ratio": {k: v / base for k, v in results.items()},
                                    "every": every, "extra_seconds_per_update": per_update,
                                    "probe_seconds_per_update": probed},
                                   indent=1))
        return per_update

    for name, s in CONFIGS.items():
        if not only or name in only:
            results[name], probe = step_time(name, s, every.get(name), args, out)
            probed.pop(name, None)
            if probe is not None:
                probed[name] = probe
            if "plain" in results:
                save()
    base = results["plain"]
    per_update = save()
    print(f"{'configuration':<24}{'s/step':>9}{'× plain':>9}{'every':>7}{'s/update':>10}{'at 1000':>9}")
    for name, t in results.items():
        extra = (f"{every[name]:>7}{per_update[name]:>10.2f}{1 + per_update[name] / 1000 / base:>9.3f}"
                 if name in every else "")
        print(f"{name:<24}{t:>9.3f}{t / base:>9.3f}{extra}")
    print(f"written {dest}")


if __name__ == "__main__":
    main()
