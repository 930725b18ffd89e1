"""`Engine.held_bytes`: what a rank holds, counted from its tensors. One process (world 1), so
ZeRO partitions nothing: every count is the whole model's, exactly, up to ZeRO's alignment."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import ModelConfig, RecipeConfig
from pipeline.config.training import DeepSpeedConfig
from pipeline.engine import held_bytes
from pipeline.engine.ds_engine import Engine, setup_distributed
from pipeline.engine.held_bytes import HELD_KEYS
from pipeline.model.transformer import build_model

VOCAB, PAD = 50, 1
PADDING = 4 * 64  # bytes ZeRO may add to align its flat groups (none for this model, as it happens)


def test_a_flat_buffer_and_its_views_are_one_storage_claimed_by_the_first_key():
    flat = torch.zeros(100)
    tally = held_bytes._HeldTally(None)
    tally.add("params", flat[:10])
    tally.add("params", flat[50:])
    tally.add("grads", flat)  # the same storage again: already the parameters'
    other = torch.zeros(25)
    tally.add("grads", other)
    tally.add("grads", other.view(5, 5))
    tally.add("optimizer", torch.zeros(0))  # nothing held
    held = tally.totals()
    assert held == {**dict.fromkeys(HELD_KEYS, 0), "params": 400, "grads": 100}
    assert tuple(held) == HELD_KEYS


def batch(seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(4, VOCAB, shape, generator=g) for shape in ((3, 7), (3, 6), (3, 6)))


@pytest.fixture(scope="module")
def dist():
    return setup_distributed(threads=1)


def engine(dist, config: str) -> tuple[Engine, int, int]:
    cfg = ModelConfig(d_model=32, encoder_layers=1, decoder_layers=1, heads=4, ffn_dim=64, dropout=0.0,
                      max_positions=64)
    recipe = RecipeConfig(model=cfg, deepspeed=DeepSpeedConfig(config=config))
    torch.manual_seed(0)
    model = build_model(recipe, VOCAB, PAD)
    return Engine(model, recipe, dist, 10), model.num_parameters(), len(list(model.parameters()))


def backward(eng: Engine, seed: int) -> None:
    eng.set_boundary(True)
    loss, _ = eng(*batch(seed))
    eng.backward(loss.sum())


def test_zero0_holds_parameters_gradients_and_adams_two_moments_whole(dist):
    eng, p, tensors = engine(dist, "zero0")
    backward(eng, 0)
    held = eng.held_bytes()
    assert held == {**dict.fromkeys(HELD_KEYS, 0), "params": 4 * p, "grads": 4 * p}  # no state before a step
    eng.step()
    backward(eng, 1)
    held = eng.held_bytes()
    assert held["params"] == 4 * p and held["grads"] == 4 * p and held["fp32_master"] == 0
    # exp_avg and exp_avg_sq, and one float32 step count per tensor
    assert 8 * p <= held["optimizer"] <= 8 * p + 8 * tensors, (held["optimizer"], 8 * p)
    assert held["buckets"] == held["other"] == 0
    assert eng.held_bytes("cuda") == dict.fromkeys(HELD_KEYS, 0)


def test_zero2_alone_holds_one_partition_the_whole_model_and_an_fp32_master_copy(dist):
    eng, p, _ = engine(dist, "zero2")
    backward(eng, 0)
    eng.step()
    backward(eng, 1)
    held = eng.held_bytes()
    for key in ("params", "grads", "fp32_master"):  # the flat group, its gradient partition, the master
        assert 4 * p <= held[key] <= 4 * p + PADDING, (key, held[key], 4 * p)
    assert 8 * p <= held["optimizer"] <= 8 * p + 2 * PADDING + 8, (held["optimizer"], 8 * p)
