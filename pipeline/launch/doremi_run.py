"""`mmtc doremi`: train DoReMi's proxy against a reference run, then write its averaged weights
as a static-weights recipe for the main model (Xie et al. 2023, Algorithm 1)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.launch.sweep import write_recipe_with_weights
from pipeline.rundir.layout import RunDir


def proxy_overrides(reference_run: str, overrides: Sequence[str], eta: float, smoothing: float) -> list[str]:
    """One stage; batches drawn uniformly, each token weighted by α over its batch share."""
    sampling = {"kind": "doremi", "apply": "token_weight", "batches": "uniform",
                "params": {"reference_run": reference_run, "eta": eta, "smoothing": smoothing}}
    return [*overrides, "stages=[]", f"sampling={json.dumps(sampling)}"]


def averaged_weights(run_dir: Path) -> dict[str, float]:
    """The proxy's average of α over training, from its last metrics row that logged it."""
    rows = RunDir(run_dir).read_jsonl(RunDir(run_dir).metrics)
    logged = [r["policy"]["average"] for r in rows if "average" in r.get("policy", {})]
    if not logged:
        raise ValueError(f"{run_dir}: no DoReMi weights were logged (is it a doremi run?)")
    return logged[-1]


def run_doremi(reference_run: str, recipe_path: str, out: Path, run_dir: Path, overrides: Sequence[str],
               nproc: int = 1, eta: float = 1.0, smoothing: float = 1e-3) -> str:
    cmd = [sys.executable, "-m", "pipeline", "run", recipe_path, "--run-dir", str(run_dir), "--nproc", str(nproc)]
    for s in proxy_overrides(reference_run, overrides, eta, smoothing):
        cmd += ["--set", s]
    print(f"doremi: training the proxy in {run_dir} against {reference_run}", flush=True)
    if subprocess.call(cmd) != 0:
        raise RuntimeError(f"the DoReMi proxy run {run_dir} failed")
    weights = averaged_weights(run_dir)
    kept = write_recipe_with_weights(recipe_path, weights, out,
                              source=f"DoReMi's averaged weights (proxy {run_dir}, reference {reference_run})")
    rows = ["DoReMi weights (the proxy's average over training):"] + [f"  {k:<12}{v:.4f}" for k, v in weights.items()]
    note = f" (stages {', '.join(kept)} keep their own sampling)" if kept else ""
    return "\n".join(rows + [f"written into {out}{note}"])
