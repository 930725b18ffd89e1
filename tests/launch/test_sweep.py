"""mmtc sweep -> scaling fit -> scaling solve, end to end on the tiny corpus."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.curriculum.recipe import load_recipe

from corpus_factory import tiny_recipe, write_corpus

pytestmark = pytest.mark.slow


def mmtc(args, env, cwd):
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_sweep_fit_solve(tmp_path, mmtc_env):
    recipe = tiny_recipe(tmp_path, write_corpus(tmp_path))
    out = tmp_path / "sweep"
    mmtc(["sweep", str(recipe), "--group", "lrl", "--out", str(out),  # the default: 7 ratios
          "--set", "train.max_steps=4", "--set", "eval.splits=[]", "--set", "eval.stage_end=false"], mmtc_env, tmp_path)
    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["ratio"] for r in sweep["runs"]] == [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9]
    assert sweep["runs"][1]["weights"]["eng-pig"] == pytest.approx(0.1)
    for run in sweep["runs"]:
        cfg = yaml.safe_load(Path(run["run_dir"], "config.yaml").read_text())
        assert cfg["sampling"]["kind"] == "weights" and cfg["stages"] == []
    fit_out = mmtc(["scaling", "fit", str(out / "sweep.json")], mmtc_env, tmp_path)
    fits = json.loads((out / "scaling_fit.json").read_text())["fits"]
    assert {f["direction"] for f in fits} == {"eng-rev", "eng-upp", "eng-pig"}
    assert all(f["points"] == 7 and f["loo_rmse"] >= 0 for f in fits) and "loo rmse" in fit_out
    solved = tmp_path / "solved.yaml"
    mmtc(["scaling", "solve", str(out / "scaling_fit.json"), "--importance", "eng-pig=2", "--recipe", str(recipe),
          "--out", str(solved)], mmtc_env, tmp_path)
    r = load_recipe(solved)
    assert r.sampling.kind == "weights"
    assert sum(r.sampling.params["weights"].values()) == pytest.approx(1.0, abs=1e-5)
