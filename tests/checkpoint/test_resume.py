"""Exact resume: a run killed at step k and resumed equals the uninterrupted run, bit for bit."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.checkpoint.average import average_run

from corpus_factory import two_stage_recipe, write_corpus
from run_checks import final_tag, metric_rows, zero_tensors

pytestmark = pytest.mark.slow



def mmtc(args, env, cwd, fault=None, check=True):
    env = dict(env)
    if fault:
        env["MMTC_FAULT"] = fault
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"mmtc {' '.join(args)} ({fault}) failed {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def tensors(tag_dir: Path) -> dict[str, torch.Tensor]:
    """Every parameter and optimizer tensor of a ZeRO-0 checkpoint, flattened by name."""
    state = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    out = {f"module.{k}": v for k, v in state["module"].items()}
    for pid, s in state["optimizer"]["state"].items():
        for k, v in s.items():
            out[f"optim.{pid}.{k}"] = torch.as_tensor(v)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory, mmtc_env):
    root = tmp_path_factory.mktemp("resume")
    recipe = two_stage_recipe(root, write_corpus(root))
    ref = root / "ref"
    mmtc(["run", str(recipe), "--run-dir", str(ref)], mmtc_env, root)
    events = [json.loads(x) for x in (ref / "events.jsonl").read_text().splitlines()]
    switch = next(e for e in events if e["event"] == "stage_end" and e["stage"] == "hrl")
    assert switch["reason"] == "monitor" and switch["monitor"] == "plateau"
    return root, recipe, ref, switch["step"]


@pytest.mark.parametrize("where", ["first", "mid", "before", "transition", "after"])
def test_kill_and_resume_equals_uninterrupted(setup, mmtc_env, where):
    root, recipe, ref, t = setup
    k = {"first": 1, "mid": 3, "before": t - 1, "transition": t, "after": t + 1}[where]
    run = root / f"killed-{where}"
    proc = mmtc(["run", str(recipe), "--run-dir", str(run)], mmtc_env, root, fault=f"kill@{k}", check=False)
    assert proc.returncode == -9, proc.stderr
    resumed = mmtc(["resume", str(run)], mmtc_env, root)
    assert "resume: from" in resumed.stdout or k < 2
    a, b = tensors(final_tag(ref)), tensors(final_tag(run))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after a kill at step {k}"
    assert metric_rows(run, k) == metric_rows(ref, k)
    ev = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    switch = next(e for e in ev if e["event"] == "stage_end" and e["stage"] == "hrl")
    assert switch["step"] == t, "the monitor-triggered transition happened at another step"
    ref_ev = [json.loads(x) for x in (ref / "events.jsonl").read_text().splitlines()]
    # the same story, told once: no event repeated by the resume (checkpoints may differ in number)
    story = [(e["step"], e["event"], e.get("stage")) for e in ev if e["event"] in ("stage_start", "stage_end")]
    assert story == [(e["step"], e["event"], e.get("stage")) for e in ref_ev if e["event"] in ("stage_start", "stage_end")]


def test_kill_during_save_falls_back_to_the_previous_checkpoint(setup, mmtc_env):
    root, recipe, ref, _ = setup
    run = root / "killed-in-save"
    proc = mmtc(["run", str(recipe), "--run-dir", str(run)], mmtc_env, root, fault="kill_in_save@4", check=False)
    assert proc.returncode == -9
    assert (run / "checkpoints" / "step00000004-hrl").is_dir()
    assert not (run / "checkpoints" / "step00000004-hrl" / "COMMIT.json").exists()
    resumed = mmtc(["resume", str(run)], mmtc_env, root)
    assert "skipping checkpoint step00000004-hrl: no commit marker" in resumed.stdout
    assert "resume: from step00000002-hrl" in resumed.stdout
    a, b = tensors(final_tag(ref)), tensors(final_tag(run))
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_truncated_shard_is_detected_by_its_checksum(setup, mmtc_env):
    root, recipe, _, _ = setup
    run = root / "truncated"
    mmtc(["run", str(recipe), "--run-dir", str(run)], mmtc_env, root, fault="kill@5", check=False)
    shard = run / "checkpoints" / "step00000004-hrl" / "mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    out = mmtc(["resume", str(run)], mmtc_env, root).stdout
    assert "skipping checkpoint step00000004-hrl: mp_rank_00_model_states.pt has" in out
    assert "resume: from step00000002-hrl" in out


def test_nan_loss_skips_the_step_on_every_tensor(setup, mmtc_env):
    root, recipe, _, _ = setup
    run = root / "nan"
    mmtc(["run", str(recipe), "--run-dir", str(run), "--set", "train.save_every=1"], mmtc_env, root,
         fault="nan_loss@3")
    before, after = tensors(run / "checkpoints" / "step00000002-hrl"), tensors(run / "checkpoints" / "step00000003-hrl")
    for name in before:
        if name.endswith(".step"):
            continue  # Adam's step counter is not a weight; it is unchanged too, checked below
        assert torch.equal(before[name], after[name]), f"{name} changed on the skipped step"
    steps = {k: v for k, v in after.items() if k.endswith(".step")}
    assert all(torch.equal(v, before[k]) for k, v in steps.items())
    ev = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in ev if e["event"] == "skipped_step"] == [3]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert next(r for r in rows if r["step"] == 3 and "loss" in r)["skipped_steps"] == 1


def test_resume_refuses_a_changed_recipe_and_from_stage_keeps_the_old_attempt(setup, mmtc_env):
    root, recipe, ref, t = setup
    run = root / "from-stage"
    mmtc(["run", str(recipe), "--run-dir", str(run)], mmtc_env, root, fault="kill@9", check=False)
    cfg = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(cfg.replace("lr: 0.003", "lr: 0.002"))
    refused = mmtc(["resume", str(run)], mmtc_env, root, check=False)
    assert refused.returncode == 2 and "train.lr: 0.003 -> 0.002" in refused.stderr
    (run / "config.yaml").write_text(cfg)
    mmtc(["resume", str(run)], mmtc_env, root)
    old = {p.relative_to(run): p.read_bytes() for p in (run / "checkpoints").rglob("*")
           if p.is_file() and "mix" in str(p) and p.name != "LATEST"}
    out = mmtc(["resume", str(run), "--from-stage", "mix", "--set", "stages.1.until.max_steps=3"], mmtc_env, root)
    assert "the earlier attempt is kept in" in out.stdout
    archive = next((run / "attempts").iterdir())
    for rel, data in old.items():
        assert (archive / rel).read_bytes() == data, f"{rel} of the earlier attempt changed"
    assert (archive / "metrics.jsonl").is_file() and (archive / "events.jsonl").is_file()
    assert final_tag(run).name == f"step{t + 3:08d}-mix-final"
    assert os.path.exists(run / "eval" / final_tag(run).name / "test.json")


@pytest.fixture(scope="module")
def zero2_reference(tmp_path_factory, mmtc_env):
    """The uninterrupted 2-process ZeRO-2 run both interrupted runs below are held against."""
    root = tmp_path_factory.mktemp("zero2")
    recipe = two_stage_recipe(root, write_corpus(root), extra="deepspeed: {config: zero2}\n")
    mmtc(["run", str(recipe), "--run-dir", str(root / "ref"), "--nproc", "2"], mmtc_env, root)
    return root, recipe, root / "ref"


def test_two_process_zero2_signal_on_one_rank_then_a_kill_then_resume_equals_uninterrupted(zero2_reference, mmtc_env):
    """Under ZeRO-2 with 2 processes. SIGUSR1 reaches the last rank only (a real signal, sent during
    step 5): both ranks stop after that step with a committed checkpoint and exit code 85. The resumed
    run is then killed (-9, after step 7; step 6 is committed) and resumed again: the result equals
    the uninterrupted run bit for bit, since the same reduction order on the same shards gives the same
    bits, so the documented tolerance is zero."""
    root, recipe, ref = zero2_reference
    run = root / "sig-then-kill"
    proc = mmtc(["run", str(recipe), "--run-dir", str(run), "--nproc", "2"], mmtc_env, root, fault="sigusr1@5",
                check=False)
    assert proc.returncode == 85, proc.stdout + proc.stderr
    assert "preempted: saved at step 5" in proc.stdout
    ev = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    pre = [e for e in ev if e["event"] == "preempted"]
    assert len(pre) == 1 and pre[0]["step"] == 5 and pre[0]["checkpoint"] == "step00000005-hrl"
    assert (run / "checkpoints" / "step00000005-hrl" / "COMMIT.json").is_file()
    killed = mmtc(["resume", str(run), "--nproc", "2"], mmtc_env, root, fault="kill@7", check=False)
    assert killed.returncode != 0 and "resume: from step00000005-hrl" in killed.stdout, killed.stdout + killed.stderr
    resumed = mmtc(["resume", str(run), "--nproc", "2"], mmtc_env, root)
    assert "resume: from step00000006" in resumed.stdout, resumed.stdout
    a, b = zero_tensors(final_tag(ref)), zero_tensors(final_tag(run))
    assert a.keys() == b.keys() and any("zero_pp_rank_1" in k for k in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert metric_rows(run, 5) == metric_rows(ref, 5)


def events(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]


def test_ctrl_c_saves_then_resume_equals_uninterrupted_and_overrides_are_refused(setup, mmtc_env):
    root, recipe, ref, _ = setup
    run = root / "ctrl-c"
    # save_every 0: before, Ctrl-C lost everything since the start (a traceback and rc 130)
    proc = mmtc(["run", str(recipe), "--run-dir", str(run), "--set", "train.save_every=0"], mmtc_env, root,
                fault="sigint@3", check=False)
    assert proc.returncode == 85, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "interrupted (Ctrl-C): saved at step 3 (step00000003-hrl)" in proc.stdout
    ev = events(run)
    i = next(i for i, e in enumerate(ev) if e["event"] == "checkpoint")
    assert ev[i]["step"] == 3 and ev[i + 1]["event"] == "preempted" and ev[i + 1]["signal"] == "SIGINT"
    config = (run / "config.yaml").read_text()
    # an override on resume goes through the same refusal as a changed recipe, on both commands
    for cmd in (["resume", str(run)], ["run", str(recipe), "--run-dir", str(run), "--resume"]):
        refused = mmtc([*cmd, "--set", "train.lr=0.002"], mmtc_env, root, check=False)
        assert refused.returncode == 2 and "train.lr: 0.003 -> 0.002" in refused.stderr, refused.stderr
        assert "--allow-change recipe" in refused.stderr and (run / "config.yaml").read_text() == config
    mmtc(["resume", str(run)], mmtc_env, root)
    a, b = tensors(final_tag(ref)), tensors(final_tag(run))
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_a_second_ctrl_c_aborts_at_once(setup, mmtc_env):
    root, recipe, _, _ = setup
    run = root / "ctrl-c-twice"
    proc = mmtc(["run", str(recipe), "--run-dir", str(run), "--set", "train.save_every=0"], mmtc_env, root,
                fault="sigint2@3", check=False)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
    assert "mmtc: interrupted" in proc.stderr
    assert not any(e["event"] == "checkpoint" for e in events(run))


def test_an_allowed_override_is_recorded_with_its_step(setup, mmtc_env):
    root, recipe, _, _ = setup
    run = root / "override"
    mmtc(["run", str(recipe), "--run-dir", str(run)], mmtc_env, root, fault="kill@3", check=False)
    train = root / "eng-pig" / "train.pig"
    data = train.read_bytes()
    train.write_bytes(data.replace(b"ay", b"ya", 1))
    try:  # a changed corpus: the refusal names the direction split and its files (before: neither)
        refused = mmtc(["resume", str(run)], mmtc_env, root, check=False)
    finally:
        train.write_bytes(data)
    assert refused.returncode == 2 and f"eng-pig train changed ({root / 'eng-pig' / 'train.eng'} | {train})" \
        in refused.stderr, refused.stderr
    out = mmtc(["resume", str(run), "--set", "train.lr=0.002", "--allow-change", "recipe"], mmtc_env, root).stdout
    assert "recipe changed from the checkpoint's (allowed): train.lr: 0.003 -> 0.002" in out
    change = next(e for e in events(run) if e["event"] == "recipe_changed")
    assert change["step"] == 2 and change["from_checkpoint"] == "step00000002-hrl"
    assert change["changes"] == [{"key": "train.lr", "old": 0.003, "new": 0.002}]
    meta = json.loads((run / "run.json").read_text())
    assert meta["recipe_changes"] == [{"step": 2, "from_checkpoint": "step00000002-hrl",
                                       "changes": [{"key": "train.lr", "old": 0.003, "new": 0.002}]}]
    assert "lr: 0.002" in (run / "config.yaml").read_text()


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_a_real_full_disk_fails_the_save_and_the_run_says_its_final_weights_are_unsaved(setup, mmtc_env):
    root, recipe, ref, _ = setup
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = root / "small-fs"
    mnt.mkdir()
    # Room for the run's files and one non-final checkpoint, not two: every later save hits ENOSPC.
    one = dir_bytes(ref / "checkpoints" / "step00000002-hrl")
    rest = dir_bytes(ref) - dir_bytes(ref / "checkpoints") - dir_bytes(ref / "eval") - dir_bytes(ref / "reports")
    size_kb = (rest + one + one // 2) // 1024 + 256
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        run = mnt / "run"
        proc = mmtc(["run", str(recipe), "--run-dir", str(run)], mmtc_env, root, check=False)
        failed = [e for e in events(run) if e["event"] == "save_failed"]
        # before: rc 1 and "RuntimeError: [enforce fail at inline_container.cc:...] unexpected pos"
        assert proc.returncode == 4, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr and failed, proc.stderr
        assert all(e["kept"] == "step00000002-hrl" for e in failed)
        assert any(e["tag"].endswith("-mix-final") for e in failed)
        assert "the scores below are of the last committed checkpoint, step00000002-hrl (step 2)" in proc.stderr
        assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == ["step00000002-hrl"]
        assert (run / "checkpoints" / "LATEST").read_text().strip() == "step00000002-hrl"
        status = mmtc(["status", str(run)], mmtc_env, root).stdout
        assert "NOT finished" in status and "trains again from step00000002-hrl" in status
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_logged_monitor_values_are_the_ones_the_decision_used(setup):
    root, recipe, ref, t = setup
    rows = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    at_switch = next(r for r in rows if r["step"] == t and "monitors" in r)
    # before: the row held the values from before this evaluation (fired: null at the switch)
    assert at_switch["monitors"]["plateau"]["fired"] is not None


def test_mmtc_average_selects_averages_and_eval_reads_the_tag(setup, mmtc_env, tmp_path):
    root, _, ref, _ = setup
    run = Path(shutil.copytree(ref, tmp_path / "run"))
    ckpts = run / "checkpoints"
    saved = sorted(p.name for p in ckpts.iterdir() if p.name.startswith("step"))
    average_run(str(run), "last2", last=2)
    assert json.loads((ckpts / "last2" / "COMMIT.json").read_text())["averaged_from"] == saved[-2:]
    a, b = (tensors(ckpts / name) for name in saved[-2:])
    avg = torch.load(ckpts / "last2" / "consolidated.pt", weights_only=True)
    for name, value in avg.items():
        assert torch.equal(value, (a[f"module.{name}"].float() + b[f"module.{name}"].float()) / 2), name
    # --best: the checkpoint whose step's logged evaluation has the lowest mean hrl dev loss
    average_run(str(run), "best1", best=1, group="hrl")
    hrl = [n for n, d in json.loads((run / "data_summary.json").read_text())["directions"].items()
           if d["group"] == "hrl"]
    dev = {r["step"]: r["dev_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
           if "dev_loss" in r}
    scored = sorted((sum(dev[int(n[4:12])][d] for d in hrl) / len(hrl), n) for n in saved if int(n[4:12]) in dev)
    assert len(scored) >= 2 and scored[0][0] < scored[1][0]
    assert json.loads((ckpts / "best1" / "COMMIT.json").read_text())["averaged_from"] == [scored[0][1]]
    # an average of one checkpoint translates as that checkpoint does; LATEST is untouched
    last = (ckpts / "LATEST").read_text().strip()
    mmtc(["average", str(run), "--last", "1", "--out", "last1"], mmtc_env, root)
    scores = [mmtc(["eval", str(run), "--checkpoint", tag, "--max-sentences", "8"], mmtc_env, root).stdout
              for tag in ("last1", last)]
    assert scores[0].splitlines()[0] == "checkpoint last1" and scores[0].splitlines()[1:] == scores[1].splitlines()[1:]
    assert (ckpts / "LATEST").read_text().strip() == last
