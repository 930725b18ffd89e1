"""Checkpoint averaging (fairseq's average_checkpoints rule) on hand-made states and scripted dev
losses; `mmtc average` on a trained run is in test_resume.py (its trained run)."""

import pytest
import torch

from pipeline.checkpoint import commit as ckpt
from pipeline.checkpoint.average import Selection, average_states, select_best, select_last, write_average
from pipeline.checkpoint.weights import consolidated_state


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
    sel = select_best(tags(10, 20, 30, 40, 50), rows, 2, ["a", "b"], "hrl")
    assert [t.step for t in sel.tags] == [20, 30]  # step order
    assert sel.scores == {ckpt.tag_for(30, "main"): 2.5, ckpt.tag_for(20, "main"): 3.0}
    assert sel.skipped == [f"{ckpt.tag_for(50, 'main')} (no dev evaluation of group hrl at step 50)"]
    assert [t.step for t in select_best(tags(10, 20, 30, 40), rows, 1, ["c"], "lrl").tags] == [40]
    with pytest.raises(ValueError, match="only 4 checkpoint"):
        select_best(tags(10, 20, 30, 40, 50), rows, 5, ["a", "b"], "hrl")


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
