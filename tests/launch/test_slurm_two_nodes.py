"""On a real two-node Slurm cluster whose nodes are two "hosts" on this machine (network namespaces with
their own names and addresses, tests/netns_hosts.py; slurm/local-cluster.sh with MMTC_SLURM_NODES):
`mmtc submit --nodes 2 --tasks-per-node 1` runs rank 0 on the first node and rank 1 on the second
(gloo across the veth pair), the USR1 warning reaches the batch host only (which forwards it to both
tasks), both ranks save, the job requeues itself, resumes and ends equal, bit for bit, to the
uninterrupted 2-process run on one host."""

import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from corpus_factory import LONGER_MIX, ONE_THREAD
from netns_hosts import TwoHosts
from run_checks import (
    assert_equals_uninterrupted,
    assert_preempted_event,
    events,
    job_log,
    last_step,
    local_cluster,
    preempted_tag,
    wait_finished,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.exclusive]

JOB = ["--nodes", "2", "--tasks-per-node", "1", "--gpus-per-node", "0", "--cpus-per-task", "1",
       "--partition", "cpu", "--time", "15:00"]


@pytest.fixture(scope="module")
def cluster(hosts, tmp_path_factory, mmtc_env):
    """slurmctld and a slurmd in host 1, a slurmd in host 2; client commands run in host 1."""
    state = tmp_path_factory.mktemp("slurm2")
    nodes = ",".join(f"{h.name}={h.address}@{h.netns}" for h in hosts.hosts)
    # ports and job ids: the namespaces have ports of their own, but keep clear of the rendezvous
    # ports jobs derive from their ids (15000-29999)
    env = dict(mmtc_env, MMTC_SLURM_DIR=str(state), MMTC_SLURM_PORT=str(random.randint(30000, 32700)),
               MMTC_SLURM_FIRST_JOB_ID=str(random.randint(1000, 14000)), MMTC_SLURM_NODES=nodes)
    with local_cluster(env, state) as running:
        yield running


def in_host1(hosts: TwoHosts, args: Sequence[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> str:
    proc = hosts[0].run(list(args), env=env, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_the_cluster_has_two_nodes_in_two_hosts(hosts, cluster):
    nodes = in_host1(hosts, ["sinfo", "-h", "-N", "-o", "%N %T"], cluster, Path.cwd())
    assert sorted(nodes.split("\n")[:-1]) == [f"{h.name} idle" for h in hosts.hosts], nodes
    names = in_host1(hosts, ["srun", "-N2", "--ntasks-per-node=1", "hostname"], cluster, Path.cwd(), timeout=120)
    assert sorted(names.split()) == [h.name for h in hosts.hosts], names


def test_a_warned_two_node_job_saves_on_both_requeues_resumes_and_equals_the_uninterrupted_run(
        hosts, cluster, two_rank_ref):
    root, recipe, ref, switch = two_rank_ref
    run_dir = root / "two-nodes"
    in_host1(hosts, [sys.executable, "-m", "pipeline.launch.slurm", "submit", str(recipe), "--run-dir", str(run_dir),
                     *JOB, *LONGER_MIX, *ONE_THREAD], cluster, root)
    [job] = [json.loads(x) for x in (run_dir / "slurm" / "jobs.jsonl").read_text().splitlines()]
    wait_for("step 2 of the job", lambda: last_step(run_dir)[0] >= 2, 180)
    # what Slurm does before the time limit with --signal=B:USR1@N: USR1 to the batch shell only
    in_host1(hosts, ["scancel", "--signal=USR1", "--batch", job["job_id"]], cluster, Path.cwd())
    info = wait_finished(job["job_id"], cluster, run_dir, timeout=300, wrap=hosts[0].command)
    assert info["Restarts"] == "1", info
    assert info["NodeList"] == hosts.nodelist and info["BatchHost"] == hosts[0].name, info

    ev, log = events(run_dir), job_log(run_dir)  # the log: the batch host's, with both tasks' output
    first, second = hosts.hosts
    assert f"on {hosts.nodelist} at" in log, log
    ranks = f"ranks 0 on {first.name} ({first.address}), 1 on {second.name} ({second.address})"
    assert log.count(ranks) == 2, log  # in the first run and in the requeued one
    assert f"rank 0 of 2 at {first.name}:" in log, log  # the rendezvous by the first node's name
    # the batch shell (on host 1 only) got the warning once and forwarded it to both tasks
    assert log.count("mmtc: SIGUSR1 at") == 1, log
    assert "requeueing (restart 1 of at most 5)" in log, log
    tag = preempted_tag(log)
    for node, rank in ((first, 0), (second, 1)):  # both tasks saved and stopped with EXIT_PREEMPTED
        assert f"srun: error: {node.name}: task {rank}: Exited with exit code 85" in log, log
    saved = {p.name for p in (run_dir / "checkpoints" / tag).iterdir()}
    assert {"rank_state0.pt", "rank_state1.pt"} <= saved, saved  # rank 1's state, written on host 2
    assert [(e["slurm_job_id"], e["slurm_restart_count"], e["resume"]) for e in ev if e["event"] == "job"] == [
        (job["job_id"], 0, False), (job["job_id"], 1, True)]
    assert [e["tag"] for e in ev if e["event"] == "resume"] == [tag]
    assert next(e["step"] for e in ev if e["event"] == "stage_end" and e["stage"] == "hrl") == switch
    assert_preempted_event(ev, tag)
    assert_equals_uninterrupted(run_dir, ref)
