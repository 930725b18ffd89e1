"""Two ranks on two "hosts" (network namespaces with their own names and addresses, tests/netns_hosts.py)
started as Slurm starts tasks: `python -m pipeline.launch.slurm_task` with SLURM_PROCID-style
variables and a two-node nodelist, which it maps to RANK, MASTER_ADDR (the first node's name), ...
gloo on CPU across the veth pair. The run must equal, bit for bit, the same recipe as 2 ranks on
one host; a rank killed (or hung) mid-step must leave the other with a message naming it, not a
hang; and the resume after it must be exact."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corpus_factory import LONGER_MIX, ONE_THREAD
from netns_hosts import TwoHosts
from run_checks import assert_equals_uninterrupted, last_step, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.exclusive]

EXIT_LOST_RANK = 5  # pipeline.launch.worker


def prepare(run_dir: Path, recipe: Path, sets: list[str], env: dict[str, str], cwd: Path) -> None:
    """What `mmtc submit` does on the submit host: the run directory and its data, no training."""
    code = ("import sys; from pipeline.curriculum.recipe import load_recipe; from pipeline.rundir.layout import RunDir;"
            "from pipeline.launch.slurm import prepare_run; sets = sys.argv[3:]; r = load_recipe(sys.argv[1], sets);"
            "run = RunDir(sys.argv[2]); run.create(r, overwrite=False, source=sys.argv[1], overrides=sets);"
            "prepare_run(run, r)")
    sets = [s for s in sets if s != "--set"]
    proc = subprocess.run([sys.executable, "-c", code, str(recipe), str(run_dir), *sets], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


class Job:
    """One task per host, with the variables srun gives a 2-node, 1-task-per-node step."""

    def __init__(self, hosts: TwoHosts, run_dir: Path, env: dict[str, str], cwd: Path) -> None:
        job_id = str(random.randint(1000, 14000))  # the rendezvous port is derived from it
        self.logs = [run_dir.parent / f"{run_dir.name}-{job_id}-rank{r}.log" for r in (0, 1)]
        self.procs = []
        for rank in (0, 1):
            task_env = dict(env, SLURM_JOB_ID=job_id, SLURM_PROCID=str(rank), SLURM_LOCALID="0",
                            SLURM_NODEID=str(rank), SLURM_NTASKS="2", SLURM_TASKS_PER_NODE="1(x2)",
                            SLURM_JOB_NODELIST=hosts.nodelist)
            with open(self.logs[rank], "w") as log:
                self.procs.append(hosts[rank].popen([sys.executable, "-m", "pipeline.launch.slurm_task", str(run_dir)],
                                                    env=task_env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT))

    def log(self, rank: int) -> str:
        return self.logs[rank].read_text()

    def wait(self, rank: int, timeout: float) -> int:
        try:
            return self.procs[rank].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"rank {rank} still running after {timeout:.0f} s:\n{self.log(rank)}") from None

    def finish(self, timeout: float = 600) -> None:
        codes = [self.wait(r, timeout) for r in (0, 1)]
        assert codes == [0, 0], f"exit codes {codes}:\n{self.log(0)}\n----\n{self.log(1)}"

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_hosts_reach_each_other_by_name_and_nothing_else(hosts):
    assert hosts[0].run(["hostname"]).stdout.strip() == hosts[0].name
    code = "import socket, sys; s = socket.create_connection((sys.argv[1], 22), timeout=3)"
    # by name, to the peer's address: refused (nothing listens), not unreachable
    peer = hosts[0].run([sys.executable, "-c", code, hosts[1].name])
    assert "ConnectionRefusedError" in peer.stderr, peer.stderr
    routes = hosts[0].run(["ip", "route"]).stdout
    assert "default" not in routes, routes  # no way out of the pair
    out = hosts[0].run([sys.executable, "-c", code, "10.0.2.2"])  # anywhere else: no route at all
    assert "unreachable" in out.stderr.lower(), out.stderr


def test_two_ranks_on_two_hosts_equal_two_ranks_on_one(hosts, two_rank_ref, mmtc_env):
    root, recipe, ref, _ = two_rank_ref
    run_dir = root / "two-hosts"
    prepare(run_dir, recipe, [*LONGER_MIX, *ONE_THREAD], mmtc_env, root)
    job = Job(hosts, run_dir, mmtc_env, root)
    job.finish()
    log = job.log(0)
    assert f"rank 0 of 2 at {hosts[0].name}:" in log, log  # the rendezvous by the first node's name
    assert f"ranks 0 on {hosts[0].name} ({hosts[0].address}), 1 on {hosts[1].name} ({hosts[1].address})" in log, log
    assert_equals_uninterrupted(run_dir, ref)


def test_a_killed_or_hung_rank_is_named_and_the_resume_is_exact(hosts, two_rank_ref, mmtc_env):
    root, recipe, ref, switch = two_rank_ref
    run_dir = root / "lost-rank"
    prepare(run_dir, recipe, [*LONGER_MIX, *ONE_THREAD], mmtc_env, root)

    # 1. rank 1's host loses its process mid-step: rank 0 is told at once which rank went
    job = Job(hosts, run_dir, mmtc_env, root)
    wait_for("step 2 of the mix stage", lambda: last_step(run_dir)[0] >= switch + 2, 300)
    hosts[1].kill_all(signal.SIGKILL)
    start = time.monotonic()
    assert job.wait(0, 120) == EXIT_LOST_RANK, job.log(0)
    assert time.monotonic() - start < 60, "rank 0 should notice a dead peer's closed socket at once"
    assert f"a collective failed: lost rank 1 (host {hosts[1].name}, {hosts[1].address})" in job.log(0), job.log(0)
    assert "Traceback" not in job.log(0), job.log(0)
    job.kill()

    # 2. resumed; then rank 0 hangs (stopped, its sockets open): rank 1 waits out the timeout
    job = Job(hosts, run_dir, dict(mmtc_env, MMTC_COLLECTIVE_TIMEOUT="25"), root)
    before = last_step(run_dir)[0]
    wait_for("two more steps", lambda: last_step(run_dir)[0] >= before + 2 and "resume: from" in job.log(0), 300)
    job.procs[0].send_signal(signal.SIGSTOP)
    start = time.monotonic()
    assert job.wait(1, 200) == EXIT_LOST_RANK, job.log(1)
    waited = time.monotonic() - start
    assert 20 < waited < 130, f"rank 1 gave up after {waited:.0f} s, with a 25 s collective timeout"
    assert f"a collective failed: lost rank 0 (host {hosts[0].name}, {hosts[0].address})" in job.log(1), job.log(1)
    job.procs[0].send_signal(signal.SIGCONT)
    job.kill()

    # 3. resumed again, it finishes equal to the run that was never interrupted
    job = Job(hosts, run_dir, mmtc_env, root)
    job.finish()
    assert "resume: from" in job.log(0)
    assert_equals_uninterrupted(run_dir, ref)

