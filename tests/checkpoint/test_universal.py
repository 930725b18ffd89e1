"""Resuming on another world size with Adam's moments, through DeepSpeed's universal checkpoints:
2 -> 1 -> 2 processes under ZeRO-2, and the fallback to fresh moments when the conversion fails."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_resume import events, final_tag, mmtc

from corpus_factory import two_stage_recipe, write_corpus

# What `mmtc resume RUN --allow-change world` does up to the first step, in one process, and then
# every parameter's full fp32 master weight and Adam moments as the new engine holds them (DeepSpeed's
# own gathering of its ZeRO fragments), its step counts, LR and our counters. With argv[3] == "fail"
# the conversion raises, as a converter error would.
PROBE = r"""
import sys
import torch
import pipeline.engine.ds_engine as de
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state
from pipeline.data.prepare import load_corpus
from pipeline.rundir.layout import RunDir
from pipeline.train.trainer import Trainer

if sys.argv[3] == "fail":
    def boom(tag_dir):
        raise RuntimeError(f"ds_to_universal failed on {tag_dir.name}: injected")
    import pipeline.engine.ds_checkpoint as dc
    dc.to_universal = boom
run = RunDir(sys.argv[1])
recipe = run.load_config()
t = Trainer(recipe, run, de.setup_distributed(1), load_corpus(recipe, run.tokenizer, lambda m: None))
t.ckpt.restore(frozenset({"world"}))
inner = t.engine.optimizer
while hasattr(inner, "optimizer") and inner.optimizer is not inner:
    inner = inner.optimizer
out = {"params": {}, "steps": [float(s["step"]) for s in inner.state.values() if "step" in s],
       "lr": t.engine.lr(), "step": t.counters.step}
for n, p in t.engine.module.named_parameters():
    out["params"][n] = {"fp32": safe_get_full_fp32_param(p).reshape(-1)}
    if inner.state:
        for k in ("exp_avg", "exp_avg_sq"):
            out["params"][n][k] = safe_get_full_optimizer_state(p, k).reshape(-1)
torch.save(out, sys.argv[2])
"""

pytestmark = pytest.mark.slow


def zero12_shards(tag: Path) -> tuple[dict[str, dict[str, torch.Tensor]], list[float], list[float]]:
    """Each parameter's fp32 weight, exp_avg and exp_avg_sq whole, read straight from a ZeRO-1/2 tag's
    per-rank optimizer files (each rank's fragment of it, by param_slice_mappings, in rank order), with
    the ranks' step counts and LRs: our own reading, not ds_to_universal's."""
    files = sorted(tag.glob("*zero_pp_rank_*_mp_rank_00_optim_states.pt"),
                   key=lambda f: int(f.name.split("zero_pp_rank_")[1].split("_")[0]))
    assert len(files) == 2
    pieces: dict[str, dict[str, list[torch.Tensor]]] = {}
    steps, lrs = [], []
    for f in files:
        opt = torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        base = opt["base_optimizer_state"]
        for g, mapping in enumerate(opt["param_slice_mappings"]):
            state = base["state"][g]
            steps.append(float(state["step"]))
            lrs.append(base["param_groups"][g]["lr"])
            flat = {"fp32": opt["single_partition_of_fp32_groups"][g], "exp_avg": state["exp_avg"],
                    "exp_avg_sq": state["exp_avg_sq"]}
            for name, frag in mapping.items():
                for k, v in flat.items():
                    pieces.setdefault(name, {}).setdefault(k, []).append(v.narrow(0, frag.start, frag.numel))
    return {n: {k: torch.cat(v) for k, v in d.items()} for n, d in pieces.items()}, steps, lrs


def probe(run: Path, env: dict, cwd: Path, out: Path, mode: str = "universal") -> str:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(run), str(out), mode], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, mmtc_env):
    """A 2-process ZeRO-2 run killed after step 9: its newest commit, step 8 (2 steps into the mix
    stage, whose Adam state restarted at step 6), has both ranks' shards. `pristine` is a copy that
    the tests below copy again before resuming from it."""
    root = tmp_path_factory.mktemp("universal")
    recipe = two_stage_recipe(root, write_corpus(root), extra="deepspeed: {config: zero2}\n")
    run = root / "ws"
    mmtc(["run", str(recipe), "--run-dir", str(run), "--nproc", "2"], mmtc_env, root, fault="kill@9", check=False)
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "step00000008-mix"
    shutil.copytree(run, root / "pristine")
    return root, root / "pristine"


def fresh_copy(two_rank_run, name: str) -> Path:
    root, pristine = two_rank_run
    run = root / name
    shutil.copytree(pristine, run)
    return run


def test_two_to_one_process_keeps_adams_moments_exactly(two_rank_run, mmtc_env):
    """The 1-process engine after the resume holds exactly the 2-process shards' fp32 weights and
    moments: the conversion copies float32 values (ds_to_universal cuts and concatenates them, and
    so does the new rank's load), so the tolerance is zero. The step count and LR carry over too."""
    root, _ = two_rank_run
    run = fresh_copy(two_rank_run, "probe")
    tag = run / "checkpoints" / "step00000008-mix"
    out = probe(run, mmtc_env, root, root / "probe.pt")
    assert "2 -> 1 processes under ZeRO-2: weights, Adam's moments and step counts and the schedule carry over" in out
    assert (tag / "universal" / "zero").is_dir() and not (tag / ".universal.tmp").exists()
    expected, steps, lrs = zero12_shards(tag)
    got = torch.load(root / "probe.pt", weights_only=False)
    assert got["step"] == 8 and got["steps"] == [2.0] and steps == [2.0, 2.0]
    assert got["lr"] == lrs[0] == lrs[1]
    assert got["params"].keys() == expected.keys()
    for name, want in expected.items():
        assert want["exp_avg"].abs().sum() > 0 and want["exp_avg_sq"].abs().sum() > 0, name
        for k in ("fp32", "exp_avg", "exp_avg_sq"):
            assert torch.equal(got["params"][name][k], want[k]), (name, k)
    ev = [e for e in events(run) if e["event"] == "resume"]
    assert ev[-1]["resharded_from"] == 2 and ev[-1]["optimizer_state"] == "universal"


def test_a_failed_conversion_falls_back_to_fresh_moments(two_rank_run, mmtc_env):
    """When ds_to_universal fails the resume still goes on, as before: consolidated fp32 weights,
    fresh moments, and the message and the event say so, and why."""
    root, _ = two_rank_run
    run = fresh_copy(two_rank_run, "fallback")
    out = probe(run, mmtc_env, root, root / "fallback.pt", mode="fail")
    assert ("2 -> 1 processes under ZeRO-2: weights and schedule carry over, Adam's moments restart "
            "(no universal checkpoint: ds_to_universal failed on step00000008-mix: injected)") in out
    got = torch.load(root / "fallback.pt", weights_only=False)
    expected, _, _ = zero12_shards(run / "checkpoints" / "step00000008-mix")
    assert got["steps"] == [] and all(set(p) == {"fp32"} for p in got["params"].values())
    assert all(torch.equal(got["params"][n]["fp32"], expected[n]["fp32"]) for n in expected)
    ev = [e for e in events(run) if e["event"] == "resume"][-1]
    assert ev["optimizer_state"] == "restarted" and "injected" in ev["optimizer_restart_reason"]


def test_two_to_one_to_two_processes_trains_to_the_end(two_rank_run, mmtc_env):
    """Through the command line: refused without --allow-change world; then 2 -> 1 (killed after
    step 11, so step 10 is a 1-process commit), then 1 -> 2 to the end of the recipe, the moments
    carried over both times; the loss stays finite."""
    root, _ = two_rank_run
    run = fresh_copy(two_rank_run, "cli")
    refused = mmtc(["resume", str(run)], mmtc_env, root, check=False)
    assert refused.returncode == 2 and "written by 2 processes, this run has 1" in refused.stderr, refused.stderr
    one = mmtc(["resume", str(run), "--allow-change", "world"], mmtc_env, root, fault="kill@11", check=False)
    assert one.returncode != 0
    assert "2 -> 1 processes under ZeRO-2: weights, Adam's moments and step counts" in one.stdout, one.stdout
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "step00000010-mix"
    assert json.loads((run / "checkpoints" / "step00000010-mix" / "COMMIT.json").read_text())["world"] == 1
    two = mmtc(["resume", str(run), "--nproc", "2", "--allow-change", "world"], mmtc_env, root).stdout
    assert "1 -> 2 processes under ZeRO-2: weights, Adam's moments and step counts" in two, two
    assert final_tag(run).name.endswith("-mix-final")
    resumes = [e for e in events(run) if e["event"] == "resume"]
    assert [(e["resharded_from"], e["optimizer_state"]) for e in resumes[-2:]] == [(2, "universal"), (1, "universal")]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    after = [r["loss"] for r in rows if r["step"] > 8 and "loss" in r]
    assert len(after) >= 4 and all(math.isfinite(x) for x in after)


def test_where_the_universal_path_is_not_taken():
    """ZeRO-0 needs none (every checkpoint holds the whole optimizer state); NVMe optimizer offload
    cannot take one (DeepSpeed restores each rank's swap files instead)."""
    from pipeline.engine.ds_engine import Engine

    def why(stage: int, zero: dict) -> str | None:
        return Engine.universal_unsupported(SimpleNamespace(zero_stage=stage, config={"zero_optimization": zero}))

    assert why(2, {"stage": 2}) is None and why(3, {"offload_optimizer": {"device": "cpu"}}) is None
    assert "ZeRO-0" in why(0, {})
    assert "NVMe" in why(3, {"offload_optimizer": {"device": "nvme"}})
