"""On a real one-node Slurm cluster (slurm/local-cluster.sh, started and stopped here): one 2-task
job per stage, the second warned with USR1 mid-stage: it saves, requeues itself, resumes and finishes
with exactly the parameters and metrics of an uninterrupted 2-process run. (A single job warned in
its first stage is the two-node test's case, tests/launch/test_slurm_two_nodes.py: the same path with
the save on both nodes.) Then sequence-level KD shards as a job array."""

import json
import random
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from corpus_factory import LONGER_MIX as SETS
from run_checks import (
    assert_equals_uninterrupted,
    assert_preempted_event,
    events,
    job_info,
    job_log,
    last_step,
    local_cluster,
    preempted_tag,
    wait_finished,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.exclusive]

JOB = ["--tasks-per-node", "2", "--cpus-per-task", "1", "--partition", "cpu", "--time", "15:00"]


def free_port_pair() -> int:
    for _ in range(50):
        # above the rendezvous ports jobs derive from their ids (15000-29999), below the ephemeral range
        port = random.randint(30000, 32700)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("", port))
                b.bind(("", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for slurmctld and slurmd")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, mmtc_env):
    state = tmp_path_factory.mktemp("slurm")
    env = dict(mmtc_env, MMTC_SLURM_DIR=str(state), MMTC_SLURM_PORT=str(free_port_pair()),
               # job ids (and the rendezvous ports derived from them) apart from any other cluster here
               MMTC_SLURM_FIRST_JOB_ID=str(random.randint(1000, 14000)))
    with local_cluster(env, state) as running:
        yield running


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> str:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def submit(args: list[str], env: dict[str, str], cwd: Path) -> list[dict]:
    run([sys.executable, "-m", "pipeline.launch.slurm", "submit", *args, *JOB, *SETS], env, cwd)
    run_dir = Path(args[args.index("--run-dir") + 1])
    return [json.loads(x) for x in (run_dir / "slurm" / "jobs.jsonl").read_text().splitlines()]


def warn_job(job: str, env: dict[str, str]) -> None:
    """What Slurm does before the time limit with --signal=B:USR1@N: USR1 to the batch shell only."""
    run(["scancel", "--signal=USR1", "--batch", job], env, Path.cwd())


@pytest.fixture(scope="module")
def setup(two_rank_ref, cluster):
    return two_rank_ref


def test_chained_stage_jobs_with_a_requeue_equal_the_uninterrupted_run(setup, cluster):
    root, recipe, ref, switch = setup
    run_dir = root / "chained"
    first, second = submit([str(recipe), "--run-dir", str(run_dir), "--chain-stages"], cluster, root)
    assert (first["stage"], second["stage"], second["dependency"]) == ("hrl", "mix", first["job_id"])
    # warn the second stage's job two steps into its stage
    wait_for("step 2 of stage mix", lambda: last_step(run_dir)[0] >= switch + 2, 180)
    warn_job(second["job_id"], cluster)
    info = wait_finished(second["job_id"], cluster, run_dir)
    assert info["Restarts"] == "1", info
    assert job_info(first["job_id"], cluster)["Restarts"] == "0"
    ev, log = events(run_dir), job_log(run_dir)
    jobs = [(e["slurm_job_id"], e["slurm_restart_count"]) for e in ev if e["event"] == "job"]
    assert jobs == [(first["job_id"], 0), (second["job_id"], 0), (second["job_id"], 1)]
    tag = preempted_tag(log)
    assert "mix" in tag and "requeueing (restart 1 of at most 5)" in log
    assert [e["tag"] for e in ev if e["event"] == "resume"] == [f"step{switch:08d}-hrl-final", tag]
    assert_equals_uninterrupted(run_dir, ref)
    assert_preempted_event(ev, tag)


def test_distill_shards_as_a_job_array_then_merges_as_the_local_command_does(setup, cluster):
    root, _, ref, _ = setup
    common = [sys.executable, "-m", "pipeline", "distill", str(ref), "--corpus", str(root / "manifest.yaml"),
              "--directions", "eng-pig,eng-upp", "--beam", "1", "--unit", "100"]
    out = run([*common, "--out", str(root / "kd-slurm"), "--slurm", "--shards", "2", "--partition", "cpu",
               "--cpus-per-task", "1", "--time", "10:00"], cluster, root)
    array, merge = re.search(r"job array (\d+) .*merge as job (\d+)", out).groups()
    logs = root / "kd-slurm" / "slurm"

    def finished():
        info = job_info(merge, cluster)
        return info if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") else None

    info = wait_for(f"merge job {merge}", finished, 300, poll=1.0)
    text = "\n".join(p.read_text() for p in sorted(logs.glob("*.log")))
    assert info["JobState"] == "COMPLETED", f"{info}\n{text}"
    assert len(list(logs.glob("shards-*_*.log"))) == 2  # one log per array element
    run([*common, "--out", str(root / "kd-local")], cluster, root)
    for d, lang in (("eng-pig", "pig"), ("eng-upp", "upp")):
        assert (root / "kd-slurm" / d / f"train.{lang}").read_text() == (root / "kd-local" / d / f"train.{lang}").read_text()
