"""One writer per run directory: refused at once with the holder named; stale locks taken over."""

import errno
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from pipeline.rundir import lock as runlock
from pipeline.rundir.lock import RunLock, RunLocked

HOLD = """
import sys, time
from pipeline.rundir.lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, holder):
    with pytest.raises(RunLocked, match=f"pid {holder.pid} on host {socket.gethostname()}"):
        RunLock(tmp_path / "run").acquire()


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path, holder):
    holder.kill()
    holder.wait()
    lock = RunLock(tmp_path / "run").acquire()
    assert lock.took_over["pid"] == holder.pid
    assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert (tmp_path / "run" / ".lock").read_text() == ""  # released cleanly: nothing to take over
    assert RunLock(tmp_path / "run").acquire().took_over is None


def test_the_cli_refuses_a_second_writer_before_any_work(tmp_path, holder, mmtc_env):
    run = tmp_path / "run"
    (run / "config.yaml").write_text("name: x\n")
    for cmd in (["resume", str(run)], ["report", str(run)], ["run", "--run-dir", str(run), "--resume"]):
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "pipeline", *cmd], env=mmtc_env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert f"is in use by another writer: pid {holder.pid}" in proc.stderr
        assert time.time() - t0 < 30


def test_without_flock_the_lock_file_names_the_holder(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runlock.fcntl, "flock", no_flock)
    lock_file = tmp_path / "run" / ".lock"
    lock_file.parent.mkdir()
    lock_file.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))  # alive, here
    with pytest.raises(RunLocked, match="has no flock"):
        RunLock(tmp_path / "run").acquire()
    lock_file.write_text(json.dumps({"pid": 1234567, "host": "elsewhere"}))  # cannot tell: refuse
    with pytest.raises(RunLocked, match="host elsewhere"):
        RunLock(tmp_path / "run").acquire()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    lock = RunLock(tmp_path / "run").acquire()
    assert lock.took_over["pid"] == dead.pid
    lock.release()
