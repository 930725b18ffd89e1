"""Checkpoint averaging (fairseq's average_checkpoints rule) on hand-made states and scripted dev
losses; `mmtc average` on a trained run is in test_resume.py (its trained run)."""

import json

import pytest
import torch

from pipeline.checkpoint import commit as ckpt
from pipeline.checkpoint.average import (
    Selection,
    average_states,
    dev_bleu_scores,
    dev_loss_scores,
    select_best,
    select_last,
    write_average,
)
from pipeline.checkpoint.weights import consolidated_state
from pipeline.rundir.layout import RunDir


def test_mean_of_two_states_by_fairseqs_rule():
    a = {"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([0.5], dtype=torch.float16), "n": torch.tensor([3])}
    b = {"w": torch.tensor([3.0, 5.0]), "h": torch.tensor([1.5], dtype=torch.float16), "n": torch.tensor([4])}
    out = average_states([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 3.5]))
    assert out["h"].dtype == torch.float32 and torch.equal(out["h"], torch.tensor([1.0]))  # half summed as float
    assert torch.equal(out["n"], torch.tensor([3]))  # integers floor-divided: 7 // 2
    assert torch.equal(a["w"], torch.tensor([1.0, 2.0]))  # the inputs are not modified


def test_states_that_differ_are_refused():
    with pytest.raises(ValueError, match="other parameters"):
        average_states([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}])
    with pytest.raises(ValueError, match="shape"):
        average_states([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])
    with pytest.raises(ValueError, match="nothing to average"):
        average_states([])


def tags(*steps):
    return [ckpt.Committed(ckpt.tag_for(s, "main"), None, {"step": s}) for s in steps]


def test_best_k_by_the_mean_dev_loss_of_a_group():
    rows = [{"step": 10, "dev_loss": {"a": 3.0, "b": 5.0, "c": 1.0}},   # hrl mean 4.0
            {"step": 20, "dev_loss": {"a": 2.0, "b": 4.0, "c": 9.0}},   # 3.0
            {"step": 30, "dev_loss": {"a": 2.5, "b": 2.5, "c": 9.0}},   # 2.5
            {"step": 35, "dev_loss": {"a": 0.1, "b": 0.1, "c": 0.1}},   # no checkpoint at 35
            {"step": 40, "dev_loss": {"a": 9.0, "b": 9.0, "c": 0.5}}]   # 9.0; c alone 0.5
    def best(ts, k, dirs, group):
        return select_best(ts, dev_loss_scores(ts, rows, dirs, group), k, "dev_loss", group)

    sel = best(tags(10, 20, 30, 40, 50), 2, ["a", "b"], "hrl")
    assert [t.step for t in sel.tags] == [20, 30]  # step order
    assert sel.scores == {ckpt.tag_for(30, "main"): 2.5, ckpt.tag_for(20, "main"): 3.0}
    assert sel.skipped == [f"{ckpt.tag_for(50, 'main')} (no dev evaluation of group hrl at step 50)"]
    assert [t.step for t in best(tags(10, 20, 30, 40), 1, ["c"], "lrl").tags] == [40]
    with pytest.raises(ValueError, match="only 4 checkpoint"):
        best(tags(10, 20, 30, 40, 50), 5, ["a", "b"], "hrl")


def test_best_k_by_dev_bleu_reads_each_tags_dev_evaluation(tmp_path):
    run = RunDir(tmp_path)
    bleu = {10: {"a": 10.0, "b": 20.0}, 20: {"a": 30.0, "b": 2.0}, 30: {"a": 12.0, "b": 14.0}}  # means 15, 16, 13
    for step, per in bleu.items():
        d = run.eval_dir(ckpt.tag_for(step, "main"))
        d.mkdir(parents=True)
        (d / "dev.json").write_text(json.dumps({"directions": {k: {"bleu": v} for k, v in per.items()}}))
    ts = tags(10, 20, 30, 40)
    sel = select_best(ts, dev_bleu_scores(run, ts, ["a", "b"], "all"), 2, "dev_bleu", "all")
    assert [t.step for t in sel.tags] == [10, 20] and sel.how == "best 2 by dev_bleu of all"  # the highest
    assert sel.scores == {ckpt.tag_for(20, "main"): 16.0, ckpt.tag_for(10, "main"): 15.0}
    assert len(sel.skipped) == 1 and "mmtc eval --split dev --checkpoint " + ckpt.tag_for(40, "main") in sel.skipped[0]
    only_a = select_best(ts, dev_bleu_scores(run, ts, ["a"], "x"), 1, "dev_bleu", "x")
    assert [t.step for t in only_a.tags] == [20]


def test_last_k():
    assert [t.step for t in select_last(tags(10, 20, 30), 2).tags] == [20, 30]
    with pytest.raises(ValueError, match="has 3 committed"):
        select_last(tags(10, 20, 30), 4)


def test_the_average_is_a_committed_tag_that_resume_never_picks(tmp_path):
    chosen = []
    for step, value in ((10, 1.0), (20, 4.0)):
        tag = ckpt.tag_for(step, "main")
        (tmp_path / tag).mkdir()
        torch.save({"w": torch.full((3,), value)}, tmp_path / tag / "consolidated.pt")
        chosen.append(ckpt.commit(tmp_path, tag, {"step": step, "stage": "main", "zero_stage": 0}))
    done = write_average(tmp_path, "avg2", Selection(chosen, "last 2", {}, []))
    assert ckpt.verify(done.path)[0]["averaged_from"] == [t.tag for t in chosen]
    assert torch.equal(consolidated_state(done.path, 0)["w"], torch.full((3,), 2.5))
    assert (tmp_path / ckpt.LATEST).read_text().strip() == chosen[-1].tag
    assert ckpt.discover(tmp_path)[0].tag == chosen[-1].tag
    with pytest.raises(ValueError, match="exists"):
        write_average(tmp_path, "avg2", Selection(chosen, "last 2", {}, []))
    with pytest.raises(ValueError, match="not starting with 'step'"):
        write_average(tmp_path, "step99", Selection(chosen, "last 2", {}, []))


@pytest.mark.slow
def test_keep_best_keeps_the_lowest_dev_loss_tag_of_each_group(tmp_path, mmtc_env):
    import subprocess
    import sys

    from corpus_factory import tiny_recipe, write_corpus

    recipe = tiny_recipe(tmp_path, write_corpus(tmp_path))
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(recipe), "--run-dir", str(run),
                           "--set", "train.max_steps=12", "--set", "train.eval_every=2", "--set", "train.save_every=2",
                           "--set", "train.keep_last=1", "--set", "train.keep_best={k: 1, group: [hrl, lrl]}",
                           "--set", "eval.splits=[]", "--set", "eval.stage_end=false"],
                          env=mmtc_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    dev = {r["step"]: r["dev_loss"] for r in rows if r.get("dev_loss")}
    groups = {"hrl": ["eng-rev", "eng-upp"], "lrl": ["eng-pig"]}
    # By hand: after the last save, the lowest-loss step of each group survives (step 12 is the
    # final tag, kept anyway), with the newest (keep_last 1) and the final.
    best = {g: min(dev, key=lambda s, d=d: (sum(dev[s][x] for x in d) / len(d), s)) for g, d in groups.items()}
    left = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    want = {ckpt.tag_for(12, "main", True)} | {ckpt.tag_for(s, "main") for s in best.values() if s != 12}
    assert set(left) == want, (left, best)
