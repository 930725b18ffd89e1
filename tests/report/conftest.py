"""Three tiny two-stage runs that differ only in seed, trained once per session through the real CLI."""

import shutil
import subprocess
import sys

import pytest

from corpus_factory import two_stage_recipe, write_corpus


def start(recipe, run_dir, env, cwd, seed):
    args = [sys.executable, "-m", "pipeline", "run", str(recipe), "--run-dir", str(run_dir), "--set", f"seed={seed}"]
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc):
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"training failed:\n{out}"


@pytest.fixture(scope="session")
def seed_runs(tmp_path_factory, mmtc_env):
    """Runs a (seed 3), b (seed 4), c (seed 5): two stages (hrl until a plateau, then the mix),
    dev losses every 3 steps and gradient cosines logged (grad_similarity_every 3)."""
    root = tmp_path_factory.mktemp("report-runs")
    recipe = two_stage_recipe(root, write_corpus(root), train="grad_similarity_every: 3")
    paths = [root / n for n in ("a", "b", "c")]
    for path, seed in zip(paths, (3, 4, 5)):  # one at a time: on 2 cores parallel runs were slower
        finish(start(recipe, path, mmtc_env, root, seed))
    return paths


@pytest.fixture()
def run_copy(seed_runs, tmp_path):
    """A private copy of run a without reports (another test may have written some into a)."""
    path = shutil.copytree(seed_runs[0], tmp_path / "a")
    shutil.rmtree(path / "reports", ignore_errors=True)
    return path
