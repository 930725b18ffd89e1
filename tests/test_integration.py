"""End to end through the real CLI and DeepSpeed's launcher: train, checkpoint, evaluate, translate."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from corpus_factory import tiny_recipe, write_corpus

pytestmark = pytest.mark.slow


def mmtc(args, env, cwd, stdin=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, cwd=cwd, input=stdin,
                          capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"mmtc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def zero2_run(tmp_path_factory, mmtc_env):
    root = tmp_path_factory.mktemp("zero2")
    recipe = tiny_recipe(root, write_corpus(root), extra="deepspeed: {config: zero2}\n")
    run_dir = root / "run"
    before = shm_buffers()
    proc = mmtc(["run", str(recipe), "--run-dir", str(run_dir), "--nproc", "2"], mmtc_env, root)
    return root, run_dir, proc, shm_buffers() - before


def model_parameters(run_dir):
    import torch

    from pipeline.data.tokenizer import Tokenizer
    from pipeline.model.transformer import build_model
    from pipeline.rundir.layout import RunDir

    run = RunDir(run_dir)
    tok = Tokenizer(run.tokenizer)
    with torch.device("meta"):
        return build_model(run.load_config(), tok.vocab_size, tok.pad_id).num_parameters()


def shm_buffers():
    return set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))


def test_two_process_zero2_training_learns_and_checkpoints(zero2_run):
    root, run_dir, proc, _ = zero2_run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(5, 41, 5))
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"], [r["loss"] for r in rows]
    assert set(rows[-1]["directions"]) == {"eng-rev", "eng-upp", "eng-pig"}
    assert abs(sum(rows[-1]["p"].values()) - 1) < 1e-6
    peaks = rows[-1]["peak_host_mb"]  # every rank's own peak, gathered for the ZeRO comparisons
    assert len(peaks) == 2 and all(100 < mb < 20_000 for mb in peaks), peaks
    # What each rank holds after the last step's backward (Engine.held_bytes), against ZeRO-2's
    # 1/N: Adam's moments (8 bytes a parameter) and the fp32 master copy halved, up to the
    # partitions' alignment padding and the step count; the gradients of the whole tensors each
    # partition touches; the parameters whole on both ranks.
    held, n = rows[-1]["held_bytes"], model_parameters(run_dir)
    assert len(held) == 2, held
    for h in held:
        assert 4 * n <= h["optimizer"] <= 4 * n * 1.01 + 64, (h, n)
        assert 2 * n <= h["fp32_master"] <= 2 * n * 1.01 + 64, (h, n)
        assert 4 * n <= h["params"] <= 4 * n * 1.01 + 64, (h, n)
        assert h["grads"] < 0.75 * 4 * n, (h, n)
    assert sum(h["grads"] for h in held) >= 4 * n, (held, n)
    tags = [p for p in (run_dir / "checkpoints").iterdir() if p.is_dir()]
    assert [t.name for t in tags] == ["step00000040-main-final"]
    commit = json.loads((tags[0] / "COMMIT.json").read_text())
    assert commit["world"] == 2 and commit["zero_stage"] == 2
    assert any(f.startswith("zero_pp_rank_1") for f in commit["files"]), "rank 1's optimizer shard is saved"
    assert "BLEU" in proc.stdout and "eng-pig" in proc.stdout


def test_eval_writes_bleu_and_chrf_per_direction(zero2_run, mmtc_env):
    root, run_dir, *_ = zero2_run
    proc = mmtc(["eval", str(run_dir), "--split", "dev", "--max-sentences", "10"], mmtc_env, root)
    result = json.loads((run_dir / "eval" / "step00000040-main-final" / "dev.json").read_text())
    assert set(result["directions"]) == {"eng-rev", "eng-upp", "eng-pig"}
    for entry in result["directions"].values():
        assert entry["sentences"] == 10
        assert 0 <= entry["bleu"] <= 100 and 0 <= entry["chrf"] <= 100
        assert entry["bleu_signature"].startswith("nrefs:1|") and "nc:6|nw:0" in entry["chrf_signature"]
    assert (run_dir / "eval" / "step00000040-main-final" / "dev" / "eng-rev.hyp").read_text().count("\n") == 10
    assert "eng-upp" in proc.stdout


def test_translate_reads_stdin(zero2_run, mmtc_env):
    root, run_dir, *_ = zero2_run
    proc = mmtc(["translate", str(run_dir), "--src", "eng", "--tgt", "rev"], mmtc_env, root,
                stdin="the cat sees the dog\nbig red house\n")
    assert len(proc.stdout.strip().splitlines()) == 2
    wrong = mmtc(["translate", str(run_dir), "--src", "eng", "--tgt", "xxx"], mmtc_env, root, stdin="a\n", check=False)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr  # was a KeyError traceback
    assert "--tgt xxx: this run has no target tag for it; its languages: " in wrong.stderr and "rev" in wrong.stderr


def test_existing_run_dir_is_refused(zero2_run, mmtc_env):
    root, run_dir, *_ = zero2_run
    before = sorted(p.name for p in run_dir.iterdir())
    proc = mmtc(["run", str(root / "recipe.yaml"), "--run-dir", str(run_dir)], mmtc_env, root, check=False)
    assert proc.returncode == 2 and "already exists" in proc.stderr and "--overwrite" in proc.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_no_shared_memory_is_left_behind(zero2_run):
    """DeepSpeed's CPU all-reduce buffers (66 MB of RAM per rank) must not outlive the run."""
    assert zero2_run[3] == set()
