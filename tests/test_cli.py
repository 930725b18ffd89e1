"""The command line's promises that need no training: failed starts clean up, --version."""

import subprocess
import sys

from corpus_factory import tiny_recipe, write_corpus


def mmtc(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_a_start_that_fails_on_bad_data_can_be_retried(tmp_path, mmtc_env):
    recipe = tiny_recipe(tmp_path, write_corpus(tmp_path))
    (tmp_path / "eng-pig" / "train.eng").write_text("")  # an empty train file: mmtc run refuses it
    run = tmp_path / "run"
    first = mmtc(["run", str(recipe), "--run-dir", str(run)], env=mmtc_env, cwd=tmp_path)
    assert first.returncode == 2 and "eng-pig" in first.stderr, first.stderr
    # before: config.yaml and run.json stayed, and the same command was refused as "already exists"
    assert sorted(p.name for p in run.iterdir()) == [".lock"]
    again = mmtc(["run", str(recipe), "--run-dir", str(run)], env=mmtc_env, cwd=tmp_path)
    assert again.returncode == 2 and "already exists" not in again.stderr and "eng-pig" in again.stderr


def test_version(mmtc_env, tmp_path):
    proc = mmtc(["--version"], env=mmtc_env, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("mmtc 0.")
