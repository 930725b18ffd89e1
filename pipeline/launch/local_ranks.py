"""`--nproc N` on this machine: N worker processes started here with the environment a launcher
gives them (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), watched
until all have exited.

Why not DeepSpeed's launcher: on one host it is two more Python processes in a chain (its runner,
then its launch), each importing DeepSpeed and torch before the first worker starts (3.2 s of every
2-process start on a 2-core machine, measured with py-spy), it polls its workers once a second, and
it kills every worker the moment one exits non-zero, exit code 85 (saved and stopped) included, so
the other ranks cannot report which rank was lost. Multi-node runs go through Slurm
(pipeline/launch/slurm_task.py), which maps srun's variables to the same names.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.core.preemption import EXIT_PREEMPTED
from pipeline.engine.collectives import free_port

# After a worker fails, how long the others may take to notice (a closed socket: at once) and say
# which rank was lost before they are killed; a survivor stuck in a collective that the failure did
# not break would otherwise wait for the whole collective timeout.
GRACE_S = 30.0
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def exit_code(returncode: int) -> int:
    """A worker's code as a shell reports it: a signal's death as 128 + the signal's number."""
    return 128 - returncode if returncode < 0 else returncode


def launch(run_dir: Path, nproc: int, resume: bool, allow: str = "") -> int:
    """Train `run_dir` in `nproc` local workers; returns 0 when all finish, else the first failure's
    code (85 when all stopped after a save). Ctrl-C, SIGTERM and SIGUSR1 sent to this process are
    passed to every worker, which then finishes its step, saves and exits 85."""
    args = [str(run_dir)] + (["--resume", "--allow-change", allow] if resume else [])
    return supervise([sys.executable, "-u", "-m", "pipeline.launch.worker", *args], nproc)


def supervise(cmd: Sequence[str], nproc: int, grace_s: float = GRACE_S) -> int:
    port = free_port()
    # Each worker in its own session: a Ctrl-C in the terminal reaches this process alone, which
    # passes it on once (a second Ctrl-C typed quickly would otherwise abort the save).
    procs = [subprocess.Popen(list(cmd), env=rank_env(r, nproc, port), start_new_session=True) for r in range(nproc)]

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        return _wait_all(procs, grace_s)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _wait_all(procs: list[subprocess.Popen], grace_s: float) -> int:
    """The exit code of the run; returns with workers still running only past the grace period after a
    failure (supervise kills them)."""
    failure: int | None = None
    deadline = float("inf")
    while True:
        codes = [p.poll() for p in procs]
        if failure is None:
            failure = next((exit_code(c) for c in codes if c not in (None, 0, EXIT_PREEMPTED)), None)
            if failure is not None:
                deadline = time.monotonic() + grace_s
        if None not in codes:
            return failure if failure is not None else next((exit_code(c) for c in codes if c != 0), 0)
        if time.monotonic() > deadline:
            alive = [r for r, c in enumerate(codes) if c is None]
            print(f"mmtc: rank {', '.join(map(str, alive))} still running {grace_s:.0f} s after a rank failed "
                  f"(exit {failure}): killed", file=sys.stderr, flush=True)
            return failure
        time.sleep(0.05)
