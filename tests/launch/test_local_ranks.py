"""The local launcher of `--nproc N` (pipeline/launch/local_ranks.py) on toy workers: the ranks'
environment, the exit code it reports, a failed rank's peers killed after the grace period, and
signals passed on to every worker."""

import os
import signal
import sys
import threading
import time

from pipeline.launch.local_ranks import exit_code, supervise

# argv: the folder to write into, then what rank 0 and rank 1 do
WORKER = r"""
import os, signal, sys, time
out, rank = sys.argv[1], int(os.environ["RANK"])
open(f"{out}/rank{rank}", "w").write(" ".join(os.environ[k] for k in
    ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")))
what = sys.argv[2 + rank]
def on_signal(signum, frame):
    open(f"{out}/signal{rank}", "w").write(signal.Signals(signum).name)
    sys.exit(85)
signal.signal(signal.SIGUSR1, on_signal)
if what == "hang":
    time.sleep(600)
elif what == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(int(what))
"""


def cmd(tmp_path, rank0: str, rank1: str) -> list[str]:
    return [sys.executable, "-c", WORKER, str(tmp_path), rank0, rank1]


def test_every_rank_gets_its_environment_and_success_is_zero(tmp_path):
    assert supervise(cmd(tmp_path, "0", "0"), 2) == 0
    r0, r1 = ((tmp_path / f"rank{r}").read_text().split() for r in (0, 1))
    assert r0[:5] == ["0", "0", "2", "2", "127.0.0.1"] and r1[:5] == ["1", "1", "2", "2", "127.0.0.1"]
    assert r0[5] == r1[5] and int(r0[5]) > 0  # one rendezvous port


def test_all_saved_and_stopped_is_85_and_a_failure_wins_over_it(tmp_path):
    assert supervise(cmd(tmp_path, "85", "85"), 2) == 85
    assert supervise(cmd(tmp_path, "85", "3"), 2) == 3


def test_a_failed_rank_ends_its_hung_peer_after_the_grace_period(tmp_path, capfd):
    start = time.monotonic()
    assert supervise(cmd(tmp_path, "hang", "kill"), 2, grace_s=1.0) == 128 + signal.SIGKILL
    assert time.monotonic() - start < 30
    assert "rank 0 still running 1 s after a rank failed (exit 137): killed" in capfd.readouterr().err


def test_a_signal_to_the_launcher_reaches_every_worker(tmp_path):
    def send():
        for _ in range(200):
            if all((tmp_path / f"rank{r}").exists() for r in (0, 1)):
                break
            time.sleep(0.05)
        time.sleep(0.3)  # past the workers' signal.signal
        os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=send, daemon=True).start()
    assert supervise(cmd(tmp_path, "hang", "hang"), 2) == 85
    assert [(tmp_path / f"signal{r}").read_text() for r in (0, 1)] == ["SIGUSR1", "SIGUSR1"]


def test_exit_codes_read_as_a_shell_reads_them():
    assert exit_code(0) == 0 and exit_code(85) == 85 and exit_code(-9) == 137 and exit_code(-15) == 143
