"""Each policy inside a short training: its distribution moves as its rule says. One process where
the rule is the policy's own arithmetic; 2-process ZeRO-2 for MultiDDS (gradients from every rank)
and for every state that must survive a kill and resume across ranks."""

import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline.core.mixing import temperature_probs

from corpus_factory import tiny_recipe, write_corpus

pytestmark = pytest.mark.slow

SIZES = {"eng-rev": 600, "eng-upp": 300, "eng-pig": 80}


def train(root, env, sampling: str, steps: int = 16, nproc: int = 2, extra_train: str = "", fault=None):
    recipe = tiny_recipe(root, write_corpus(root), extra=f"deepspeed: {{config: zero2}}\nsampling: {sampling}\n")
    # No stage-end evaluation or report: these tests read the policy from the metrics log only.
    text = recipe.read_text().replace("max_steps: 40", f"max_steps: {steps}").replace(
        "log_every: 5", f"log_every: 1, eval_every: 4{extra_train}").replace(
        "eval: {beam: 2, max_sentences: 20, figures: false}", "eval: {beam: 2, max_sentences: 20, splits: [], stage_end: false}")
    recipe.write_text(text)
    run = root / "run"
    env = dict(env, **({"MMTC_FAULT": fault} if fault else {}))
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(recipe), "--run-dir", str(run),
                           "--nproc", str(nproc)], env=env, cwd=root, capture_output=True, text=True, timeout=600)
    if fault is None:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return run, [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def train_rows(rows):
    return [r for r in rows if "loss" in r]


def data_p():
    s = np.array(list(SIZES.values()), dtype=float)
    return dict(zip(SIZES, s / s.sum()))


def test_temperature_schedule(tmp_path, mmtc_env):
    _, rows = train(tmp_path, mmtc_env, "{kind: temperature_schedule, params: {start: 5.0, end: 1.0}}", nproc=1)
    taus = [r["policy"]["tau"] for r in train_rows(rows)]
    assert taus[0] > 4.5 and taus[-1] < 1.6 and all(a >= b for a, b in zip(taus, taus[1:]))
    last = train_rows(rows)[-1]
    # p is re-planned every step (a dynamic policy with every: 1) at the logged temperature
    expected = temperature_probs(list(SIZES.values()), taus[-1])
    np.testing.assert_allclose([last["p"][k] for k in SIZES], expected, rtol=1e-5)


@pytest.mark.parametrize("kind,params", [("chi2_dro", "{warmup: 0}"), ("cvar_dro", "{alpha: 0.3, ema: 0.5}")])
def test_dro_raises_the_weight_of_the_highest_loss(tmp_path, mmtc_env, kind, params):
    _, rows = train(tmp_path, mmtc_env, f"{{kind: {kind}, every: 2, params: {params}}}", nproc=1)
    last = train_rows(rows)[-1]
    ema = last["policy"]["ema_loss"]
    worst = max(ema, key=ema.get)
    assert last["p"][worst] > data_p()[worst] + 0.01, (last["p"], ema)
    assert abs(sum(last["p"].values()) - 1) < 1e-6


def test_group_dro_follows_exponentiated_losses(tmp_path, mmtc_env):
    eta = 0.05
    _, rows = train(tmp_path, mmtc_env, f"{{kind: group_dro, params: {{eta: {eta}}}}}", nproc=1)
    rows = train_rows(rows)
    assert all(abs(v - 1 / 3) < 1e-6 for v in rows[0]["p"].values())  # starts uniform
    # the p a row logs planned the next step's batches: q after every earlier step's update, on
    # the label-smoothed loss; a direction absent from a step counts its last observed loss
    log_q = np.zeros(3)
    last = dict.fromkeys(SIZES, 0.0)
    for prev, row in zip(rows, rows[1:]):
        last.update({k: v["loss"] for k, v in prev["directions"].items()})
        log_q += eta * np.array([last[k] for k in SIZES])
        expected = np.exp(log_q - log_q.max()) / np.exp(log_q - log_q.max()).sum()
        np.testing.assert_allclose([row["p"][k] for k in SIZES], expected, atol=2e-6)


def test_excess_loss_follows_the_reference(tmp_path, mmtc_env):
    # a reference far below rev's loss and above the others' makes rev the only direction with excess
    ref = "{eng-rev: 0.0, eng-upp: 50.0, eng-pig: 50.0}"
    _, rows = train(tmp_path, mmtc_env, f"{{kind: excess_group_dro, params: {{eta: 0.05, reference: {ref}}}}}", nproc=1)
    last = train_rows(rows)[-1]["p"]
    assert last["eng-rev"] > 0.5 and last["eng-pig"] < 1 / 3


def test_exp3_keeps_the_exploration_floor(tmp_path, mmtc_env):
    _, rows = train(tmp_path, mmtc_env, "{kind: exp3, params: {gamma: 0.3}}", nproc=1)
    ps = [r["p"] for r in train_rows(rows)]
    assert all(min(p.values()) >= 0.3 / 3 - 1e-6 and abs(sum(p.values()) - 1) < 1e-5 for p in ps)
    assert ps[-1] != ps[0]


def test_multidds_learns_from_gradient_alignment(tmp_path, mmtc_env):
    _, rows = train(tmp_path, mmtc_env, "{kind: multidds, every: 4, params: {lr: 0.2, steps: 1, probe_tokens: 300}}")
    rows = train_rows(rows)
    start = np.array(list(data_p().values()))
    np.testing.assert_allclose([rows[0]["p"][k] for k in SIZES], start, rtol=1e-5)  # fitted to proportional
    # the first update (at step 4) is one Adam step on -Σ r_i log p_i: each logit moves by about
    # lr in the direction of r_i - p_i Σ r (Adam's first step normalises the gradient away)
    after = next(r for r in rows if r["step"] == 5)
    r = np.array([after["policy"]["reward"][k] for k in SIZES])
    logits = np.log(start) + 0.2 * np.sign(r - start * r.sum())
    np.testing.assert_allclose([after["p"][k] for k in SIZES], np.exp(logits) / np.exp(logits).sum(), atol=1e-4)
    assert np.all(np.abs(r) <= 1)


def test_curvature_aware_respects_the_floor_and_moves(tmp_path, mmtc_env):
    _, rows = train(tmp_path, mmtc_env, "{kind: curvature_aware, every: 4, params: {epsilon: 0.05, probe_tokens: 300}}",
                    nproc=1)
    last = train_rows(rows)[-1]
    assert min(last["p"].values()) >= 0.05 - 1e-9
    assert any(abs(last["p"][k] - data_p()[k]) > 0.01 for k in SIZES)
    assert len(last["policy"]["curvature"]) == 3
    # the probe's own seconds are logged on the rows whose interval held an update, and only there
    probed = {r["step"] for r in train_rows(rows) if r["probe_s"] > 0}
    assert probed == {4, 8, 12, 16}, probed


def test_loss_weight_keeps_the_batch_mix(tmp_path, mmtc_env):
    _, rows = train(tmp_path, mmtc_env, "{kind: group_dro, apply: loss_weight, params: {eta: 0.05}}", nproc=1)
    last = train_rows(rows)[-1]
    np.testing.assert_allclose([last["p"][k] for k in SIZES], list(data_p().values()), rtol=1e-5)
    assert abs(sum(last["loss_weights"].values()) - 1) < 2e-6  # three values rounded to 6 places
    assert last["loss_weights"] != train_rows(rows)[0]["loss_weights"]


@pytest.mark.parametrize("sampling", ["{kind: chi2_dro, every: 2, params: {warmup: 0}}",
                                      "{kind: multidds, every: 3, params: {lr: 0.2, steps: 1, probe_tokens: 300}}",
                                      "{kind: exp3, apply: loss_weight, params: {gamma: 0.2}}"])
def test_policy_state_survives_kill_and_resume(tmp_path, mmtc_env, sampling):
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    _, ref = train(ref_dir, mmtc_env, sampling, steps=12, nproc=1, extra_train=", save_every: 3")
    kill_dir = tmp_path / "kill"
    kill_dir.mkdir()
    run, _ = train(kill_dir, mmtc_env, sampling, steps=12, nproc=1, extra_train=", save_every: 3", fault="kill@8")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "resume", str(run)], env=mmtc_env, cwd=kill_dir,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    keys = ("step", "p", "loss_weights", "policy", "loss", "dev_loss")
    assert [{k: r.get(k) for k in keys} for r in got] == [{k: r.get(k) for k in keys} for r in ref]
