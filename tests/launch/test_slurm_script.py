"""The Slurm launch without a cluster: generated scripts, the environment mapping, the stage guard,
submission and job-id records (through a fake sbatch), and a signal handler that does no I/O."""

import ast
import inspect
import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.core import preemption
from pipeline.curriculum.recipe import load_recipe
from pipeline.launch import slurm, slurm_task
from pipeline.rundir.layout import RunDir

from corpus_factory import tiny_recipe, two_stage_recipe, write_corpus


def check_shell(text: str, tmp_path: Path) -> None:
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    if shutil.which("shellcheck"):
        lint = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout


@pytest.mark.parametrize("nodes", [1, 2])
def test_gpu_script_is_valid_bash_with_signal_requeue_and_one_task_per_gpu(tmp_path, nodes):
    opts = slurm.SlurmOptions(nodes=nodes, gpus_per_node=8, partition="gpu", time="24:00:00", account="A",
                              qos="Q", signal_seconds=420, max_requeues=3)
    text = slurm.render_script([tmp_path / "run x"], opts)
    check_shell(text, tmp_path)
    lines = text.splitlines()
    for directive in (f"--nodes={nodes}", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu",
                      "--time=24:00:00", "--account=A", "--qos=Q", "--signal=B:USR1@420", "--requeue",
                      "--open-mode=append"):
        assert f"#SBATCH {directive}" in lines, directive
    srun = next(x for x in lines if x.startswith("srun "))
    assert f"--ntasks={8 * nodes}" in srun and "--gpu-bind=none" in srun
    assert "-m pipeline.launch.slurm_task" in text and "--until-stage" not in text
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text
    assert '[ "$restarts" -lt 3 ]' in text and '[ "$rc" -eq 85 ]' in text
    assert "trap forward USR1" in text
    assert f"RUN_DIR='{(tmp_path / 'run x').resolve()}'" in lines  # quoted: the path has a space


def test_cpu_partition_script_uses_tasks_and_cpus_not_gpus(tmp_path):
    opts = slurm.SlurmOptions(nodes=2, gpus_per_node=0, tasks_per_node=4, cpus_per_task=3, partition="cpu")
    text = slurm.render_script([tmp_path / "run"], opts, until_stage="hrl", stage="hrl")
    check_shell(text, tmp_path)
    directives = [x for x in text.splitlines() if x.startswith("#SBATCH")]
    srun = next(x for x in text.splitlines() if x.startswith("srun "))
    assert not any("gpu" in x for x in [*directives, srun])
    assert "#SBATCH --ntasks-per-node=4" in directives and "#SBATCH --cpus-per-task=3" in directives
    assert "--ntasks=8" in srun and "--cpus-per-task=3" in srun
    assert "--until-stage hrl" in text and "#SBATCH --kill-on-invalid-dep=yes" in text
    assert "#SBATCH --job-name=mmtc-run-hrl" in text


def test_job_array_script_picks_its_run_dir(tmp_path):
    dirs = [tmp_path / "sweep" / f"ratio-{r}" for r in ("0.100", "0.500")]
    text = slurm.render_script(dirs, slurm.SlurmOptions(tasks_per_node=2), array=True)
    check_shell(text, tmp_path)
    assert "#SBATCH --array=0-1" in text and "RUN_DIR=${RUN_DIRS[$SLURM_ARRAY_TASK_ID]}" in text
    assert f"#SBATCH --output={tmp_path / 'sweep' / 'slurm'}/%x-%A_%a.out" in text


def test_options_are_checked():
    with pytest.raises(ValueError, match="one task per GPU"):
        slurm.SlurmOptions(gpus_per_node=8, tasks_per_node=4).check()
    with pytest.raises(ValueError):
        slurm.SlurmOptions(nodes=0).check()


def fake_env(**over: str) -> dict[str, str]:
    env = {"SLURM_JOB_ID": "123456", "SLURM_NTASKS": "8", "SLURM_TASKS_PER_NODE": "2(x3),2",
           "SLURM_JOB_NODELIST": "node[01-03],gpu7", "SLURM_NODEID": "2", "SLURM_PROCID": "5",
           "SLURM_LOCALID": "1"}
    return {**env, **over}


def test_env_mapping_from_a_fake_slurm_environment():
    assert slurm_task.torch_env(fake_env()) == {
        "RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "node01", "MASTER_PORT": str(15000 + 123456 % 15000),
    }
    # srun's step variables win over the job's (a step may use part of the allocation)
    step = slurm_task.torch_env(fake_env(SLURM_STEP_NODELIST="gpu[7-8]", SLURM_STEP_NUM_TASKS="3",
                                         SLURM_STEP_TASKS_PER_NODE="2,1", SLURM_NODEID="1", SLURM_LOCALID="0"))
    assert step["MASTER_ADDR"] == "gpu7" and step["WORLD_SIZE"] == "3" and step["LOCAL_WORLD_SIZE"] == "1"
    over = slurm_task.torch_env(fake_env(MMTC_MASTER_ADDR="10.0.0.1", MMTC_MASTER_PORT="29500"))
    assert over["MASTER_ADDR"] == "10.0.0.1" and over["MASTER_PORT"] == "29500"
    with pytest.raises(slurm_task.SlurmEnvError, match="SLURM_PROCID"):
        slurm_task.torch_env({k: v for k, v in fake_env().items() if k != "SLURM_PROCID"})
    with pytest.raises(slurm_task.SlurmEnvError, match="do not match"):
        slurm_task.torch_env(fake_env(SLURM_NTASKS="9"))


@pytest.mark.parametrize("expr,hosts", [
    ("node[01-03],gpu7", ["node01", "node02", "node03", "gpu7"]),
    ("vm", ["vm"]),
    ("a[1-2,5],b[098-100]", ["a1", "a2", "a5", "b098", "b099", "b100"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
])
def test_hostlist_expansion(expr, hosts):
    assert slurm_task.expand_hostlist(expr) == hosts
    if shutil.which("scontrol"):  # the reference, where Slurm's client is installed
        ref = subprocess.run(["scontrol", "show", "hostnames", expr], capture_output=True, text=True)
        if ref.returncode == 0:
            assert ref.stdout.split() == hosts


def test_tasks_per_node_expansion():
    assert slurm_task.expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert slurm_task.expand_tasks_per_node("8") == [8]


def test_signal_handler_does_no_io():
    """The handler may only set flags: any call (print, a save, a lock) could deadlock or corrupt
    state if it interrupts the same machinery. Its one call is signal.Signals(signum).name; a second
    Ctrl-C raises KeyboardInterrupt (what Python's own SIGINT handler does)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(preemption._handler)))
    calls = [ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert calls == ["signal.Signals"]
    code = preemption._handler.__code__
    assert set(code.co_names) <= {"_requested", "_signal_name", "signal", "Signals", "name", "SIGINT",
                                  "KeyboardInterrupt"}


def make_run(tmp_path: Path) -> RunDir:
    manifest = tmp_path / "manifest.yaml"  # never read: the guard only needs the recipe's stages
    recipe = load_recipe(two_stage_recipe(tmp_path, manifest))
    run = RunDir(tmp_path / "run")
    run.create(recipe, overwrite=False, source="test", overrides=[])
    return run


def commit(run: RunDir, tag: str, stage_index: int, final: bool) -> None:
    path = run.checkpoints / tag
    path.mkdir(parents=True)
    (path / "COMMIT.json").write_text(json.dumps({"step": 1, "stage_index": stage_index, "final": final,
                                                  "files": {}}))


def test_stage_guard_skips_a_stage_that_is_already_done(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    assert not slurm_task.stage_done(str(run.path), "hrl") and not slurm_task.has_checkpoint(str(run.path))
    commit(run, "step00000004-hrl", 0, final=False)
    assert not slurm_task.stage_done(str(run.path), "hrl") and slurm_task.has_checkpoint(str(run.path))
    commit(run, "step00000006-hrl-final", 0, final=True)
    assert slurm_task.stage_done(str(run.path), "hrl") and not slurm_task.stage_done(str(run.path), "mix")
    for k, v in fake_env(SLURM_NTASKS="1", SLURM_TASKS_PER_NODE="1", SLURM_NODEID="0", SLURM_PROCID="0",
                         SLURM_LOCALID="0").items():
        monkeypatch.setenv(k, v)
    # A requeued (or resubmitted) job of a finished stage exits 0 at once, before any training.
    assert slurm_task.main([str(run.path), "--until-stage", "hrl"]) == 0
    assert os.environ["RANK"] == "0" and os.environ["MASTER_ADDR"] == "node01"


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """An sbatch that logs its arguments and hands out job ids 101, 102, ..."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    (bin_dir / "sbatch").write_text(textwrap.dedent(f"""\
        #!/bin/bash
        echo "$*" >> {log}
        n=$(wc -l < {log})
        echo "$((100 + n));cluster"
        """))
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_chain_stages_submit_one_job_per_stage_afterok_and_record_the_ids(tmp_path, fake_sbatch):
    run = make_run(tmp_path)
    ids = slurm.submit_run(run.path, ["hrl", "mix"], slurm.SlurmOptions(tasks_per_node=2))
    assert ids == ["101", "102"]
    calls = fake_sbatch.read_text().splitlines()
    assert calls[0] == f"--parsable {run.path / 'slurm' / 'stage0-hrl.sbatch'}"
    assert calls[1] == f"--parsable --dependency=afterok:101 {run.path / 'slurm' / 'stage1-mix.sbatch'}"
    records = [json.loads(x) for x in (run.path / "slurm" / "jobs.jsonl").read_text().splitlines()]
    assert [(r["job_id"], r["stage"], r["dependency"]) for r in records] == [("101", "hrl", None), ("102", "mix", "101")]
    first = (run.path / "slurm" / "stage0-hrl.sbatch").read_text()
    last = (run.path / "slurm" / "stage1-mix.sbatch").read_text()
    # the last stage's job runs to the end of the run, final evaluation included
    assert "--until-stage hrl" in first and "--until-stage" not in last
    # resubmitted after the first stage is done: only the second stage gets a job
    commit(run, "step00000006-hrl-final", 0, final=True)
    assert slurm.submit_run(run.path, ["hrl", "mix"], slurm.SlurmOptions()) == ["103"]


def test_dry_run_prints_the_scripts_and_creates_nothing(tmp_path, capsys):
    recipe = two_stage_recipe(tmp_path, tmp_path / "manifest.yaml")
    run_dir = tmp_path / "dry"
    argv = ["submit", str(recipe), "--run-dir", str(run_dir), "--nodes", "2", "--gpus-per-node", "8",
            "--partition", "gpu", "--time", "24:00:00", "--chain-stages", "--dry-run"]
    assert slurm.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("#!/bin/bash") == 2 and "afterok:<job of stage hrl>" in out
    assert "#SBATCH --signal=B:USR1@300" in out and "--ntasks=16" in out
    assert not run_dir.exists()


def test_mmtc_submit_is_wired_into_the_cli(tmp_path, capsys):
    from pipeline import cli

    if "submit" not in cli._parser().format_help():
        pytest.skip("pipeline/cli.py does not register `mmtc submit` yet (add_submit_command)")
    recipe = two_stage_recipe(tmp_path, tmp_path / "manifest.yaml")
    assert cli.main(["submit", str(recipe), "--run-dir", str(tmp_path / "r"), "--dry-run"]) == 0
    assert "#SBATCH --requeue" in capsys.readouterr().out


def test_sweep_is_one_job_array_with_prepared_runs_and_sweep_json(tmp_path, fake_sbatch, monkeypatch):
    monkeypatch.setenv("MMTC_CACHE", str(tmp_path / "cache"))
    recipe = tiny_recipe(tmp_path, write_corpus(tmp_path, sizes={"rev": 60, "upp": 40, "pig": 20}, dev=8, test=8))
    out = tmp_path / "sweep"
    path = slurm.submit_sweep(str(recipe), [0.2, 0.6], "lrl", out, ["train.max_steps=4"],
                              slurm.SlurmOptions(tasks_per_node=2))
    sweep = json.loads(path.read_text())
    dirs = [Path(r["run_dir"]) for r in sweep["runs"]]
    assert [d.name for d in dirs] == ["ratio-0.200", "ratio-0.600"]
    for d, r in zip(dirs, sweep["runs"]):
        config = load_recipe(d / "config.yaml")
        assert config.sampling.kind == "weights" and config.sampling.params["weights"] == r["weights"]
        assert (d / "tokenizer" / "spm.model").is_file() and (d / "data_summary.json").is_file()
    assert fake_sbatch.read_text().splitlines() == [f"--parsable {out / 'slurm' / 'sweep.sbatch'}"]
    text = (out / "slurm" / "sweep.sbatch").read_text()
    assert "#SBATCH --array=0-1" in text and all(str(d.resolve()) in text for d in dirs)
    assert json.loads((dirs[1] / "slurm" / "jobs.jsonl").read_text())["job_id"] == "101_1"


@pytest.fixture
def fake_slurm_bin(tmp_path, monkeypatch):
    """srun and scontrol stand-ins: srun exits with $FAKE_RC, or with 85 once it gets SIGUSR1."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(textwrap.dedent(f"""\
        #!/bin/bash
        trap 'echo "srun got USR1" >> {log}; exit 85' USR1
        echo "srun $*" >> {log}
        if [ -n "${{FAKE_WAIT:-}}" ]; then for _ in $(seq 1 300); do sleep 0.1; done; fi
        exit "${{FAKE_RC:-0}}"
        """))
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "scontrol $*" >> {log}\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def batch_env(**over: str) -> dict[str, str]:
    return {**os.environ, "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "vm", **over}


@pytest.mark.parametrize("rc,restarts,requeued,status", [
    (85, "0", True, 0),     # preempted: requeue, and the job ends cleanly to start again
    (85, "3", False, 85),   # preempted once too often: the cap stops it
    (1, "0", False, 1),     # a failure is not a preemption: no requeue
    (0, "0", False, 0),
])
def test_batch_script_requeues_only_a_preempted_job_below_the_cap(tmp_path, fake_slurm_bin, rc, restarts,
                                                                   requeued, status):
    script = tmp_path / "job.sbatch"
    script.write_text(slurm.render_script([tmp_path / "run"], slurm.SlurmOptions(max_requeues=3)))
    proc = subprocess.run(["bash", str(script)], env=batch_env(FAKE_RC=str(rc), SLURM_RESTART_COUNT=restarts),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == status, proc.stdout + proc.stderr
    calls = fake_slurm_bin.read_text()
    assert ("scontrol requeue 77" in calls) == requeued
    assert "-m pipeline.launch.slurm_task" in calls and str((tmp_path / "run").resolve()) in calls


def test_batch_script_forwards_usr1_to_the_job_step(tmp_path, fake_slurm_bin):
    script = tmp_path / "job.sbatch"
    script.write_text(slurm.render_script([tmp_path / "run"], slurm.SlurmOptions()))
    proc = subprocess.Popen(["bash", str(script)], env=batch_env(FAKE_WAIT="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 20
    while "srun " not in (fake_slurm_bin.read_text() if fake_slurm_bin.exists() else ""):
        assert time.time() < deadline, "srun never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)  # as --signal=B:USR1 does: to the batch shell only
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    calls = fake_slurm_bin.read_text()
    assert "srun got USR1" in calls and "scontrol requeue 77" in calls, calls
    assert "status 85" in out and "requeueing (restart 1 of at most 5)" in out
