import math

import pytest
import torch

from pipeline.config import TrainConfig
from pipeline.engine.lr_schedule import StepSchedule, lr_at


def test_inverse_sqrt_by_hand():
    cfg = TrainConfig(lr=1e-3, warmup_steps=100, lr_schedule="inverse_sqrt")
    assert lr_at(0, cfg, 1000) == pytest.approx(1e-5)
    assert lr_at(99, cfg, 1000) == pytest.approx(1e-3)
    assert lr_at(399, cfg, 1000) == pytest.approx(1e-3 * math.sqrt(100 / 400))


def test_cosine_reaches_min_lr():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, lr_schedule="cosine", min_lr=1e-5)
    assert lr_at(9, cfg, 110) == pytest.approx(1e-3)
    assert lr_at(59, cfg, 110) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert lr_at(109, cfg, 110) == pytest.approx(1e-5)
    assert lr_at(500, cfg, 110) == pytest.approx(1e-5)


def test_schedule_state_round_trip_and_restart():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.0)
    cfg = TrainConfig(lr=1.0, warmup_steps=4, lr_schedule="constant")
    s = StepSchedule(opt, cfg, 100)
    for _ in range(2):
        s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.75)
    t = StepSchedule(torch.optim.SGD([p], lr=0.0), cfg, 100)
    t.load_state_dict(s.state_dict())
    assert t.get_last_lr() == s.get_last_lr()
    s.restart(origin=s.step_count, total_steps=100)  # a stage that resets its schedule warms up again
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)
