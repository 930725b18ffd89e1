"""Collectives and process facts in plain torch.distributed: no DeepSpeed, so evaluation,
translation and reports can use them without importing the engine."""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def collective_timeout() -> datetime.timedelta:
    """How long a rank waits in a collective for a peer: MMTC_COLLECTIVE_TIMEOUT seconds (default
    1800, torch's). A lost rank whose socket stays open (a hung process, a host cut off) is then
    reported after this rather than never. An environment setting, not a recipe key: it changes
    no result, so a resume with another value is no change of recipe."""
    raw = os.environ.get("MMTC_COLLECTIVE_TIMEOUT", "1800")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1
    if seconds <= 0:
        raise ValueError(f"MMTC_COLLECTIVE_TIMEOUT={raw!r}: expected a number of seconds > 0")
    return datetime.timedelta(seconds=seconds)


def bound_every_group(timeout: datetime.timedelta) -> None:
    """Make `timeout` the default of every process group created from now on. DeepSpeed's groups
    (the clone of the world group that gradient clipping and ZeRO's reductions use, and any
    data-parallel group) come from dist.new_group without a timeout, which torch fills with its
    module default (30 minutes), not the world group's: a rank hung in such a collective was waited
    for half an hour whatever MMTC_COLLECTIVE_TIMEOUT said (seen in the two-host test)."""
    c10d.default_pg_timeout = timeout
    c10d.default_pg_nccl_timeout = timeout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group on the normal way out: a gloo group left to the interpreter's
    teardown can abort a finished rank ("terminate called without an active exception", seen once
    after a complete 2-process run), failing a run that succeeded."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In place, and returned. NCCL reduces only GPU tensors: the trainer's counters live on the CPU,
    so under NCCL they make a round trip through the GPU."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        if t.device.type == "cpu" and dist.get_backend() == "nccl":
            on_gpu = t.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
            t.copy_(on_gpu)
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def peak_memory_mb(device: torch.device) -> list[float]:
    """[peak resident host memory, peak GPU memory allocated, resident host memory now] of this
    process, in MB. The peak holds start-up transients (DeepSpeed flattens copies of the weights);
    the resident size between steps shows what the optimizer's partitioning keeps."""
    import resource

    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    try:
        now = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        now = 0.0  # not Linux
    return [host, gpu, now]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# -- a lost rank: who it was, for the message of the ranks left waiting --------------------------
_PEERS: list[tuple[str, str]] = []  # (host name, address) of every rank, gathered at start-up


def host_address() -> tuple[str, str]:
    name = socket.gethostname()
    try:
        return name, socket.gethostbyname(name)
    except OSError:
        return name, "?"


def record_peers() -> list[tuple[str, str]]:
    """Every rank's host name and address (a collective, at start-up while all are there), kept to
    name a rank that is lost later: gloo's errors name a peer only by its address."""
    global _PEERS
    me = host_address()
    if not dist.is_initialized() or dist.get_world_size() == 1:
        _PEERS = [me]
    else:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, me)
        _PEERS = [tuple(x) for x in out]
    return _PEERS


def describe_peers() -> str:
    """`rank 0 on host (address), ...`, from what record_peers gathered."""
    return ", ".join(f"{r} on {h} ({a})" for r, (h, a) in enumerate(_PEERS))


# What gloo and NCCL say when a peer is gone or silent. "Application timeout caused pair closure" is
# gloo's word for a peer that stopped answering (a stopped or hung process, sockets still open), seen
# where the timeout fires inside the pair rather than in the wait.
_LOST_PEER_TEXTS = ("gloo/transport", "Connection reset by peer", "Connection closed by peer",
                    "Timed out waiting", "Application timeout caused pair closure",
                    "NCCL communicator was aborted")


def is_collective_failure(exc: BaseException) -> bool:
    """A collective that failed because a peer went away or stopped answering (gloo raises a plain
    RuntimeError from its transport; NCCL a DistBackendError)."""
    text = str(exc)
    return isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and any(
        s in text for s in _LOST_PEER_TEXTS))


def _who(rank: int) -> str:
    host, addr = _PEERS[rank] if rank < len(_PEERS) else ("?", "?")
    return f"rank {rank} (host {host}, {addr})"


def _roll_call(rank: int, world: int, wait_s: float) -> list[int]:
    """The ranks that have not checked in to the rendezvous store after `wait_s` (every survivor
    of a failed collective checks in)."""
    store = dist.distributed_c10d._get_default_store()
    store.set(f"mmtc/alive/{rank}", "1")
    end = time.monotonic() + wait_s
    while True:
        missing = [r for r in range(world) if r != rank and not store.check([f"mmtc/alive/{r}"])]
        if not missing or time.monotonic() > end:
            return missing
        time.sleep(0.2)


def report_lost(exc: BaseException, wait_s: float = 10.0) -> str:
    """The message of a rank whose collective failed: which ranks are lost, by a roll call in the
    rendezvous store, or, where the store does not answer (it lives in rank 0's process), rank 0
    and the rank at the address the error names."""
    rank, world = dist.get_rank(), dist.get_world_size()
    result: list[list[int]] = []

    def call() -> None:
        with contextlib.suppress(Exception):
            result.append(_roll_call(rank, world, wait_s))

    # In a thread with a deadline: a request to a hung store host blocks past the store's timeout.
    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(wait_s + 5)
    if result:
        lost = result[0]
    else:
        m = re.search(r"\[([0-9a-fA-F.:]+)\]:\d+", str(exc))
        by_addr = [r for r, (_, a) in enumerate(_PEERS) if m and a == m.group(1) and r != rank]
        lost = sorted({0, *by_addr}) if rank != 0 else by_addr
    names = (", ".join(_who(r) for r in lost) if lost else
             "no rank: all checked in, so a peer gave up first (its own timeout, or an error it reported)")
    return (f"{_who(rank)}: a collective failed: lost {names}. This rank stops too; resume from the last "
            f"committed checkpoint once every rank can run again. The error: {str(exc).strip()[:400]}")
