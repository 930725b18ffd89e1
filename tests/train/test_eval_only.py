"""An eval-only (zero-shot) direction through a real run: never sampled, scored at every
evaluation and at the stage end, in its own group, watched by a monitor; a stage that names it is
refused before anything is prepared."""

from __future__ import annotations

import json
import subprocess
import sys

from corpus_factory import RULES, sentences, tiny_recipe, write_corpus


def test_an_eval_only_direction_is_scored_and_never_sampled(tmp_path, mmtc_env):
    manifest = write_corpus(tmp_path)
    d = tmp_path / "rev-upp"
    d.mkdir()
    for split, seed in (("dev", 901), ("test", 902)):
        src = sentences(12, seed)
        (d / f"{split}.rev").write_text("".join(RULES["rev"](s) + "\n" for s in src))
        (d / f"{split}.upp").write_text("".join(RULES["upp"](s) + "\n" for s in src))
    manifest.write_text(manifest.read_text() + """  - src: rev
    tgt: upp
    eval_only: true
    dev: {src: rev-upp/dev.rev, tgt: rev-upp/dev.upp}
    test: {src: rev-upp/test.rev, tgt: rev-upp/test.upp}
""")
    watch = """
stages:
  - name: main
    until:
      any: [{monitor: overfitting, directions: [group:zero-shot], patience: 50}]
"""
    recipe = tiny_recipe(tmp_path, manifest, extra=watch)
    recipe.write_text(recipe.read_text().replace("max_steps: 40", "max_steps: 16, eval_every: 8"))
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(recipe), "--run-dir", str(run)],
                          env=mmtc_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"dev_loss"' in x]
    assert [e["step"] for e in evals] == [8, 16]
    for e in evals:
        assert "rev-upp" in e["dev_loss"]  # scored at every evaluation ...
        assert set(e["train_nll"]) == {"eng-rev", "eng-upp", "eng-pig"}  # ... and never trained on
        assert "rev-upp" in e["monitors"]["overfitting"]["dev_loss"]  # the monitor watches it
    start = next(json.loads(x) for x in (run / "events.jsonl").read_text().splitlines() if '"stage_start"' in x)
    assert start["directions"] == ["eng-rev", "eng-upp", "eng-pig"]
    test = json.loads(next((run / "eval").glob("*/test.json")).read_text())
    assert test["directions"]["rev-upp"]["sentences"] == 12
    assert test["averages"]["zero-shot"]["directions"] == 1
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["directions"]["rev-upp"]["eval_only"] is True and "train" not in summary["directions"]["rev-upp"]

    # a stage may not sample it: refused with its key path, before any data is prepared
    bad = tiny_recipe(tmp_path, manifest, extra="stages:\n  - name: main\n    directions: [eng-rev, rev-upp]\n")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(bad), "--run-dir", str(tmp_path / "bad")],
                          env=mmtc_env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "stages[0].directions[1]: rev-upp is eval-only (no training data): a stage cannot sample it" in proc.stderr
