"""One writer per run directory: an exclusive lock held for the life of any command that writes it.

`mmtc run`, `mmtc resume`, `mmtc report` and rank 0 of a Slurm task hold `RUN_DIR/.lock` with
flock(2); the workers they launch write under that holder's lock. A second writer is refused at
once, with the holder's pid, host and command (written into the lock file). The kernel releases
a dead process's flock, so a stale lock is taken over by the next writer (and said so). Where the
filesystem has no flock (some network filesystems answer ENOLCK), the lock file's content is the
lock: a live holder on this host, or any holder on another host, refuses; a dead one on this host
is taken over.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from pipeline.rundir.layout import LOCK_NAME

_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class RunLocked(RuntimeError):
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder_text(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on host {holder.get('host')} ({holder.get('command', '?')}, "
            f"since {holder.get('since', '?')})")


class RunLock:
    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None
        self.took_over: dict | None = None  # the stale holder this lock replaced, if any

    def _read(self) -> dict:
        try:
            text = self.path.read_text()
        except OSError:
            return {}
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError:
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLocked(f"{self.path.parent} is in use by another writer: {_holder_text(self._read())}. "
                            "Wait for it to end, or stop it; nothing was changed.") from None
        except OSError as exc:
            if exc.errno not in _NO_FLOCK:
                os.close(fd)
                raise
            self._check_content_lock()
        previous = self._read()
        if previous.get("pid") and previous.get("pid") != os.getpid():
            self.took_over = previous  # its process died without releasing: the kernel dropped its flock
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv[:3]),
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def _check_content_lock(self) -> None:
        holder = self._read()
        if not holder.get("pid"):
            return
        here = holder.get("host") == socket.gethostname()
        if not here or _alive(int(holder["pid"])):
            raise RunLocked(f"{self.path.parent} is in use by another writer: {_holder_text(holder)} "
                            "(this filesystem has no flock; the lock file names the holder). If that "
                            f"process is gone, delete {self.path}.")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        except OSError:
            pass  # a full disk, or a filesystem without flock: closing releases what there is
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


@contextmanager
def hold(run_dir: str | Path) -> Iterator[RunLock]:
    """The run directory's writer lock for the life of a command; says when it took over a stale one."""
    lock = RunLock(run_dir).acquire()
    old = lock.took_over
    if old:
        print(f"lock: took over the lock of pid {old.get('pid')} on {old.get('host')} (that process is gone)",
              flush=True)
    try:
        yield lock
    finally:
        lock.release()
