"""DoReMi (Xie et al. 2023) against its rule worked by hand, and `mmtc doremi` end to end."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from pipeline.balance.static import build_sampler, check_sampling
from pipeline.checkpoint.weights import clipped_excess
from pipeline.config import SamplingConfig
from pipeline.curriculum.recipe import load_recipe

from corpus_factory import tiny_recipe, write_corpus


def doremi(params):
    cfg = SamplingConfig("doremi", {"reference_run": "ref", **params}, apply="token_weight")
    return build_sampler(cfg, ["a", "b", "c"], [100, 10, 1])


def test_doremi_trace_by_hand():
    s = doremi({"eta": 1.0, "smoothing": 0.1})
    np.testing.assert_allclose(s.probabilities(0), [1 / 3] * 3)  # starts uniform, whatever the sizes
    # step 1: b absent (its score stays at 0); scores = excess / tokens = [1, 0, 0.5]
    s.observe_excess(1, np.array([3.0, 0.0, 1.0]), np.array([3.0, 0.0, 2.0]))
    e = np.exp([1.0, 0.0, 0.5])
    a1 = 0.9 * e / e.sum() + 0.1 / 3
    np.testing.assert_allclose(s.probabilities(1), a1, atol=1e-12)
    # step 2: c absent, keeps 0.5; the smoothed a1 is what the update starts from
    s.observe_excess(2, np.array([0.0, 4.0, 0.0]), np.array([2.0, 2.0, 0.0]))
    w = a1 * np.exp([0.0, 2.0, 0.5])
    a2 = 0.9 * w / w.sum() + 0.1 / 3
    np.testing.assert_allclose(s.probabilities(2), a2, atol=1e-12)
    # the output: the average over training, the initial weights included
    np.testing.assert_allclose(s.average, (np.full(3, 1 / 3) + a1 + a2) / 3, atol=1e-12)
    assert s.log_values()["score"] == {"a": 0.0, "b": 2.0, "c": 0.5}
    t = doremi({"eta": 1.0, "smoothing": 0.1})
    t.load_state_dict(s.state_dict())
    for x in (s, t):
        x.observe_excess(3, np.array([1.0, 1.0, 1.0]), np.ones(3))
    np.testing.assert_array_equal(s.average, t.average)


def test_per_token_clip_before_the_mean():
    """max(ℓ − ℓ_ref, 0) per token, not of the mean: +2 and −2 give 2, not 0; pads count nothing."""
    nll = torch.tensor([[3.0, 1.0, 9.0]])
    ref = torch.tensor([[1.0, 3.0, 0.0]])
    tgt = torch.tensor([[5, 6, 0]])
    assert clipped_excess(nll, ref, tgt).tolist() == [2.0]


def test_token_weight_scales_by_hand():
    """Each token weighted by α_d / s_d (s the batch share), normalised over the step's tokens, as
    the reference's compute_loss: α = [0.5, 0.3, 0.2], s = 1/3 each, tokens [10, 20, 30]:
    w = [1.5, 0.9, 0.6], Σ w·tokens = 51, so the scales are w / 51 (times world × accum = 2)."""
    from pipeline.balance.loss_weights import direction_scales

    got = direction_scales("token_weight", 2, np.array([0.5, 0.3, 0.2]), np.array([10.0, 20.0, 30.0]),
                           np.full(3, 1 / 3))
    np.testing.assert_allclose(got, 2 * np.array([1.5, 0.9, 0.6]) / 51, rtol=1e-6)


def test_doremi_needs_token_weighting_and_a_reference():
    errs = check_sampling(SamplingConfig("doremi", {}, apply="sample"), "sampling")
    assert ("sampling.apply", "doremi needs apply: token_weight (got sample)") in errs
    assert any("reference_run" in e for _, e in errs)


@pytest.mark.slow
def test_mmtc_doremi_trains_a_proxy_and_writes_the_average(tmp_path, mmtc_env):
    corpus = write_corpus(tmp_path)
    recipe = tiny_recipe(tmp_path, corpus)

    def mmtc(*args):
        proc = subprocess.run([sys.executable, "-m", "pipeline", *args], env=mmtc_env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    mmtc("run", str(recipe), "--run-dir", str(tmp_path / "ref"), "--set", "train.max_steps=20",
         "--set", "sampling={kind: uniform}", "--set", "eval.splits=[]", "--set", "eval.stage_end=false")
    out = tmp_path / "doremi.yaml"
    printed = mmtc("doremi", str(tmp_path / "ref"), "--recipe", str(recipe), "--out", str(out),
                   "--run-dir", str(tmp_path / "proxy"), "--set", "train.max_steps=6", "--set", "eval.splits=[]",
                   "--set", "eval.stage_end=false",
                   "--set", "train.log_every=1")
    assert "written into" in printed
    written = load_recipe(out)
    weights = written.sampling.params["weights"]
    assert written.sampling.kind == "weights" and sum(weights.values()) == pytest.approx(1.0, abs=1e-5)
    rows = [json.loads(x) for x in (tmp_path / "proxy" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "policy" in r]
    # a fresh proxy is worse than the trained reference on most tokens: positive scores
    assert all(v >= 0 for r in rows for v in r["policy"]["score"].values())
    assert any(v > 0 for v in rows[0]["policy"]["score"].values())
    assert weights == rows[-1]["policy"]["average"]
    # batches uniform, loss weights = α, which moved off uniform
    assert all(abs(v - 1 / 3) < 1e-6 for v in rows[-1]["p"].values())
    assert max(abs(v - 1 / 3) for v in rows[-1]["loss_weights"].values()) > 1e-4
    cfg = yaml.safe_load((tmp_path / "proxy" / "config.yaml").read_text())
    assert cfg["sampling"]["kind"] == "doremi" and cfg["sampling"]["apply"] == "token_weight"
