"""`mmtc sweep` and `mmtc scaling fit|solve`: short runs at several sampling ratios, the scaling
law fitted to their dev losses, and the weights that minimise the predicted loss."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.balance.scaling_law import Fit, fit_direction, load_fits, save_fits, solve
from pipeline.curriculum.recipe import load_recipe
from pipeline.data.manifest import load_manifest
from pipeline.data.prepare import resolve_manifest
from pipeline.rundir.layout import RunDir


def ratio_weights(names: Sequence[str], sizes: Sequence[int], groups: dict[str, str | None], group: str,
                  ratio: float) -> dict[str, float]:
    """`ratio` of the probability to `group`, the rest to the others; size-proportional within each."""
    inside = [i for i, n in enumerate(names) if groups.get(n) == group]
    outside = [i for i in range(len(names)) if i not in inside]
    if not inside or not outside:
        raise ValueError(f"--group {group}: needs directions both in and outside the group")
    w = np.zeros(len(names))
    for idx, share in ((inside, ratio), (outside, 1.0 - ratio)):
        s = np.array([sizes[i] for i in idx], dtype=np.float64)
        w[idx] = share * s / s.sum()
    return {n: round(float(x), 8) for n, x in zip(names, w)}


def plan_sweep(recipe_path: str, ratios: Sequence[float], group: str, overrides: Sequence[str]) -> list[dict[str, Any]]:
    from pipeline.data.prepare import prepare_corpus

    recipe = load_recipe(recipe_path, list(overrides))
    corpus = prepare_corpus(recipe.data, recipe.tokenizer, log=lambda _m: None)
    names = corpus.manifest.trained  # eval-only directions have no data to weigh
    sizes = corpus.sizes(names)
    groups = {d.name: d.group for d in corpus.manifest.directions}
    return [{"ratio": r, "weights": ratio_weights(names, sizes, groups, group, r)} for r in ratios]


def run_overrides(entry: dict[str, Any], overrides: Sequence[str], max_steps: int) -> list[str]:
    """What turns the recipe into one ratio's run: a single stage, the ratio's explicit weights, and
    a dev evaluation at the end (the fit reads each run's final dev losses)."""
    sampling = {"kind": "weights", "params": {"weights": entry["weights"]}}
    return [*overrides, "stages=[]", f"sampling={json.dumps(sampling)}", f"train.eval_every={max_steps}"]


def run_sweep(recipe_path: str, ratios: Sequence[float], group: str, out: Path, overrides: Sequence[str],
              nproc: int = 1) -> Path:
    """One single-stage run per ratio under `out`, each with explicit weights; returns sweep.json."""
    plan = plan_sweep(recipe_path, ratios, group, overrides)
    recipe = load_recipe(recipe_path, list(overrides))
    out.mkdir(parents=True, exist_ok=True)
    for entry in plan:
        run_dir = out / f"ratio-{entry['ratio']:.3f}"
        entry["run_dir"] = str(run_dir)
        sets = run_overrides(entry, overrides, recipe.train.max_steps)
        cmd = [sys.executable, "-m", "pipeline", "run", recipe_path, "--run-dir", str(run_dir), "--nproc", str(nproc)]
        for s in sets:
            cmd += ["--set", s]
        print(f"sweep: ratio {entry['ratio']} of {group} -> {run_dir}", flush=True)
        if subprocess.call(cmd) != 0:
            raise RuntimeError(f"sweep run {run_dir} failed")
    path = out / "sweep.json"
    path.write_text(json.dumps({"recipe": recipe_path, "overrides": list(overrides), "group": group, "runs": plan},
                               indent=1))
    return path


def final_dev_losses(run_dir: Path) -> dict[str, float]:
    rows = RunDir(run_dir).read_jsonl(run_dir / "metrics.jsonl")
    dev = [r["dev_loss"] for r in rows if "dev_loss" in r]
    if not dev:
        raise ValueError(f"{run_dir}: no dev loss was logged (set train.eval_every)")
    return dev[-1]


def fit_sweep(sweep_json: Path) -> list[Fit]:
    sweep = json.loads(sweep_json.read_text())
    recipe = load_recipe(sweep["recipe"], sweep.get("overrides", []))
    manifest = load_manifest(resolve_manifest(recipe.data, lambda _m: None))
    summary = json.loads((Path(sweep["runs"][0]["run_dir"]) / "data_summary.json").read_text())
    fits = []
    for name in manifest.trained:  # an eval-only direction has no data size to fit
        ratios, losses = [], []
        for run in sweep["runs"]:
            ratios.append(run["weights"][name])
            losses.append(final_dev_losses(Path(run["run_dir"]))[name])
        size = summary["directions"][name]["train"]["pairs"]
        fits.append(fit_direction(name, size, ratios, losses))
    return fits


def write_recipe_with_weights(recipe_path: str, weights: dict[str, float], out: Path,
                              source: str = "scaling-law weights from `mmtc scaling solve`") -> list[str]:
    """The recipe with `weights` as its sampling, at the top and in every stage that trains all
    directions with a sampling of its own (else that stage would silently keep it). Stages on a
    subset keep theirs: the weights were solved for all directions together. Returns the names
    of the stages that kept their own sampling."""
    data = yaml.safe_load(Path(recipe_path).read_text()) or {}
    sampling = {"kind": "weights", "params": {"weights": weights}}
    data["sampling"] = sampling
    kept = []
    for i, stage in enumerate(data.get("stages") or []):
        if not isinstance(stage, dict) or "sampling" not in stage:
            continue
        if "all" in (stage.get("directions") or ["all"]):
            stage["sampling"] = dict(sampling)
        else:
            kept.append(str(stage.get("name", f"stages[{i}]")))
    header = f"# {recipe_path} with {source}\n"
    if kept:
        header += f"# stages on a subset of directions keep their own sampling: {', '.join(kept)}\n"
    out.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return kept


def cmd_fit(sweep_json: Path, out: Path | None) -> str:
    fits = fit_sweep(sweep_json)
    out = out or sweep_json.with_name("scaling_fit.json")
    save_fits(fits, out)
    rows = [f"scaling-law fit per direction ({out}): L(p) = a p^-alpha + b p^beta + m_inf",
            f"  {'direction':<12}{'D':>8}{'points':>8}{'loo rmse':>10}  params"]
    for f in fits:
        params = " ".join(f"{k}={v:.3g}" for k, v in f.params.items())
        loo = "n/a" if f.loo_rmse is None else f"{f.loo_rmse:.4f}"
        rows.append(f"  {f.direction:<12}{f.size:>8}{f.points:>8}{loo:>10}  {params}")
    rows.append("  loo rmse: each ratio's dev loss predicted by the law fitted to the other ratios")
    return "\n".join(rows)


def cmd_solve(fit_json: Path, importance: dict[str, float], recipe: str | None, out: Path | None,
              extrapolate: bool = False) -> str:
    fits = load_fits(fit_json)
    r = np.array([importance.get(f.direction, 1.0) for f in fits])
    p = solve(fits, r / r.sum(), extrapolate=extrapolate)
    weights = {f.direction: round(float(x), 6) for f, x in zip(fits, p)}
    rows = ["p = argmin Σ r_i L_i(p_i):"] + [f"  {k:<12}{v:.4f}" for k, v in weights.items()]
    if recipe and out:
        kept = write_recipe_with_weights(recipe, weights, out)
        rows.append(f"written into {out}" + (f" (stages {', '.join(kept)} keep their own sampling)" if kept else ""))
    return "\n".join(rows)
