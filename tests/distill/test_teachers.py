"""LSSD's teacher selection on scripted dev losses, snapshot sharing, the stalled rule, the teacher
forward split by direction, and the bank's state round trip."""

import math

import numpy as np
import torch

from pipeline.config import DistillConfig, ModelArch
from pipeline.distill.lssd import token_losses
from pipeline.distill.teachers import TeacherBank
from pipeline.model.transformer import Seq2SeqTransformer

ARCH = ModelArch(d_model=16, encoder_layers=1, decoder_layers=1, heads=2, ffn_dim=32, dropout=0.0)
NAMES = ["a", "b", "c"]
V = 30


def model(seed: int) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    return Seq2SeqTransformer(ARCH, V, 0).eval()


class ScriptedEngine:
    """An engine whose weights at step s are those of model(s): snapshots are told apart by step."""

    def __init__(self) -> None:
        self.step = 0
        self.calls = 0

    def snapshot_weights(self, dtype, device):
        self.calls += 1
        return {k: v.detach().to(device, dtype).clone() for k, v in model(self.step).named_parameters()}


def observe(bank, engine, step, losses, watched=NAMES):
    engine.step = step
    return bank.observe(step, dict(zip(NAMES, losses)), watched, engine)


def scripted(cfg=None):
    bank, engine = TeacherBank(NAMES, model(99), cfg or DistillConfig(snapshot_dtype="fp32"), torch.device("cpu")), ScriptedEngine()
    first = observe(bank, engine, 10, [5.0, 6.0, 7.0])
    assert first.directions == NAMES and first.snapshots == 1  # one snapshot shared by all three
    second = observe(bank, engine, 20, [4.0, 6.5, 6.0])  # a and c improve; b keeps step 10's
    assert second.directions == ["a", "c"] and second.snapshots == 2
    third = observe(bank, engine, 30, [4.5, 5.9, 6.1])  # only b: step 10's snapshot has no direction left
    assert third.directions == ["b"] and third.snapshots == 2
    assert observe(bank, engine, 40, [4.2, 6.0, 6.05]) is None  # none beats its best
    assert engine.calls == 3  # a snapshot per evaluation that improved something, never per direction
    return bank, engine


def test_teachers_follow_each_directions_best_dev_loss_and_share_snapshots():
    bank, _ = scripted()
    assert bank.teacher_step.tolist() == [20, 30, 20]
    assert bank.best.tolist() == [4.0, 5.9, 6.0]
    assert sorted(bank.snapshots) == [20, 30]
    per = sum(p.numel() for p in model(0).parameters()) * 4
    assert bank.nbytes() == 2 * per


def test_only_directions_the_stage_watches_change_teacher():
    bank, engine = TeacherBank(NAMES, model(99), DistillConfig(), torch.device("cpu")), ScriptedEngine()
    observe(bank, engine, 5, [1.0, 1.0, 1.0], watched=["a"])
    assert bank.teacher_step.tolist() == [5, -1, -1] and math.isinf(bank.best[1])


def test_stalled_directions_distil_and_ones_that_just_improved_do_not():
    bank, engine = scripted()
    # latest evaluation at 40 improved nothing: everyone with a teacher distils
    assert bank.teaching().tolist() == [True, True, True]
    observe(bank, engine, 50, [4.1, 5.0, 7.0])  # b improves at 50: it trains on the plain loss until 60
    assert bank.teaching().tolist() == [True, False, True]
    always = TeacherBank(NAMES, model(99), DistillConfig(when="always"), torch.device("cpu"))
    observe(always, engine, 60, [1.0, 1.0, 1.0])
    assert always.teaching().tolist() == [True, True, True]


def batch(n_rows: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, V, (n_rows, 7), generator=g)
    tgt = torch.randint(3, V, (n_rows, 6), generator=g)
    for i in range(n_rows):  # ragged lengths: pads at the end of rows
        src[i, 7 - i % 3:] = 0
        tgt[i, 6 - i % 2 * 2:] = 0
    tgt_in = torch.cat([torch.full((n_rows, 1), 2), tgt[:, :-1]], 1) * (tgt != 0)
    tgt_in[:, 0] = 2
    return src, tgt_in, tgt


def test_each_row_goes_through_its_own_directions_teacher():
    bank, _ = scripted()
    src, tgt_in, tgt_out = batch(5)
    direction = torch.tensor([0, 1, 2, 0, 1])
    q, covered = bank.distributions(src, tgt_in, tgt_out, direction)
    assert bool(covered.all()) and q.shape == (int(tgt_out.ne(0).sum()), V)
    rows = []
    for i, d in enumerate(direction.tolist()):
        teacher = model(int(bank.teacher_step[d]))
        logits = teacher.target_logits(src[i : i + 1], tgt_in[i : i + 1], tgt_out[i : i + 1])
        rows.append(torch.softmax(logits.float(), -1))
    torch.testing.assert_close(q, torch.cat(rows), rtol=1e-5, atol=1e-6)


def test_rows_without_a_teacher_train_on_the_plain_loss():
    bank, engine = TeacherBank(NAMES, model(99), DistillConfig(snapshot_dtype="fp32", when="always"),
                               torch.device("cpu")), ScriptedEngine()
    observe(bank, engine, 7, [1.0, 1.0, 1.0], watched=["a"])
    student = model(3)
    src, tgt_in, tgt_out = batch(4, seed=1)
    direction = torch.tensor([0, 1, 0, 2])
    cfg = DistillConfig(weight=0.7, gate="hard", when="always")
    tl = token_losses(student, bank, cfg, True, src, tgt_in, tgt_out, direction)
    loss, nll = student(src, tgt_in, tgt_out)
    teacher = model(7)
    real = tgt_out.ne(0)
    # the direct computation: teacher distribution per token, CE of the student against it
    lp = torch.log_softmax(student.target_logits(src, tgt_in, tgt_out).float(), -1)
    qt = torch.softmax(teacher.target_logits(src, tgt_in, tgt_out).float(), -1)
    kd = torch.zeros_like(loss)
    kd[real] = -(qt * lp).sum(-1)
    pt, ps = torch.zeros_like(loss), torch.zeros_like(loss)
    pt[real] = qt.gather(1, tgt_out[real][:, None]).squeeze(1)
    ps[real] = lp.exp().gather(1, tgt_out[real][:, None]).squeeze(1)
    g = torch.where(pt > ps, 1.0, 0.2)
    rows_a = (direction == 0)[:, None] & real
    want = torch.where(rows_a, (loss + 0.7 * g * kd) / 2, loss)
    torch.testing.assert_close(tl.objective, want, rtol=1e-5, atol=1e-6)
    assert tl.taught.tolist() == rows_a.tolist()
    # inactive (start_after not reached): the label-smoothed loss alone
    off = token_losses(student, bank, cfg, False, src, tgt_in, tgt_out, direction)
    torch.testing.assert_close(off.objective, loss)


def test_state_round_trip_keeps_selection_and_snapshots():
    bank, _ = scripted()
    state, tensors = bank.state_dict(), bank.tensors()
    fresh = TeacherBank(NAMES, model(98), DistillConfig(snapshot_dtype="fp32"), torch.device("cpu"))
    fresh.load_state_dict(state, tensors)
    assert fresh.teacher_step.tolist() == bank.teacher_step.tolist() and fresh.last_eval == 40
    np.testing.assert_array_equal(fresh.best, bank.best)
    for s in bank.snapshots:
        for k, v in bank.snapshots[s].items():
            assert torch.equal(fresh.snapshots[s][k], v)
    src, tgt_in, tgt_out = batch(3)
    d = torch.tensor([2, 1, 0])
    assert torch.equal(fresh.distributions(src, tgt_in, tgt_out, d)[0], bank.distributions(src, tgt_in, tgt_out, d)[0])


def test_bf16_snapshots_take_half_the_memory():
    bank, _ = scripted(DistillConfig(snapshot_dtype="bf16"))
    per = sum(p.numel() for p in model(0).parameters()) * 2
    assert bank.nbytes() == 2 * per
    assert all(v.dtype == torch.bfloat16 for snap in bank.snapshots.values() for v in snap.values())
