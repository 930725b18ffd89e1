"""LSSD's gates and objective against values worked out by hand from their criterion
(label_smoothed_cross_entropy_with_online_distillation.py), and the teacher forward against each
teacher run on its own rows."""

import math

import torch

from pipeline.config import DistillConfig
from pipeline.distill.lssd import gate, objective

# Two sentences of three tokens; the second has a pad at the end.
PT = torch.tensor([[0.5, 0.1, 0.4], [0.3, 0.6, 0.0]])  # teacher's probability of each reference token
PS = torch.tensor([[0.2, 0.4, 0.4], [0.6, 0.3, 0.9]])  # student's
REAL = torch.tensor([[True, True, True], [True, True, False]])


def close(got: torch.Tensor, want: list[list[float]]) -> None:
    torch.testing.assert_close(got, torch.tensor(want), rtol=0, atol=1e-6)


def test_token_hard_gate_is_one_where_the_teacher_is_more_confident_else_the_floor():
    g = gate(DistillConfig(gate="hard"), PT, PS, REAL)
    # 0.5 > 0.2: 1; 0.1 < 0.4: 0.2; 0.4 = 0.4 (not greater): 0.2 | 0.3 < 0.6: 0.2; 0.6 > 0.3: 1; pad: 0
    close(g, [[1.0, 0.2, 0.2], [0.2, 1.0, 0.0]])


def test_token_soft_gate_is_the_ratio_capped_at_one():
    g = gate(DistillConfig(gate="soft"), PT, PS, REAL)
    close(g, [[1.0, 0.25, 1.0], [0.5, 1.0, 0.0]])


def test_sentence_gates_compare_sums_and_means_over_the_real_tokens():
    hard = gate(DistillConfig(gate="hard", level="sentence"), PT, PS, REAL)
    # sentence 1: Σ teacher 1.0 > Σ student 1.0? no (equal) -> 0.2; sentence 2: 0.9 > 0.9? no -> 0.2
    close(hard, [[0.2, 0.2, 0.2], [0.2, 0.2, 0.0]])
    pt = torch.tensor([[0.9, 0.5, 0.4], [0.2, 0.1, 0.7]])
    hard = gate(DistillConfig(gate="hard", level="sentence", hard_floor=0.3), pt, PS, REAL)
    # 1.8 > 1.0 -> 1 for every token; 0.3 < 0.9 (the pad's 0.7 and 0.9 do not count) -> 0.3
    close(hard, [[1.0, 1.0, 1.0], [0.3, 0.3, 0.0]])
    soft = gate(DistillConfig(gate="soft", level="sentence"), pt, PS, REAL)
    # means: (1.8/3)/(1.0/3) = 1.8 -> 1; (0.3/2)/(0.9/2) = 1/3
    close(soft, [[1.0, 1.0, 1.0], [1 / 3, 1 / 3, 0.0]])


def test_no_gate_weighs_every_real_token_fully():
    assert gate(DistillConfig(), PT, PS, REAL).tolist() == [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]


def test_objective_halves_the_sum_only_where_a_teacher_applies():
    cfg = DistillConfig(weight=1.5)
    loss = torch.tensor([[2.0, 1.0]])
    kd = torch.tensor([[4.0, 8.0]])
    g = torch.tensor([[0.2, 1.0]])
    taught = torch.tensor([[True, False]])
    # (2 + 1.5 * 0.2 * 4) / 2 = 1.6; no teacher: the label-smoothed loss as it is
    close(objective(cfg, loss, kd, g, taught), [[1.6, 1.0]])


def test_a_student_probability_that_underflowed_gets_the_full_soft_weight():
    g = gate(DistillConfig(gate="soft"), torch.tensor([[0.0, 0.3]]), torch.tensor([[0.0, 0.0]]),
             torch.tensor([[True, True]]))
    assert g.tolist() == [[1.0, 1.0]] and not any(math.isnan(x) for x in g.flatten().tolist())
