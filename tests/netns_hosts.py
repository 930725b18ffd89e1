"""Two "hosts" on one machine for the multi-node tests: two network namespaces joined by a veth
pair, each with its own address, host name (a UTS namespace per command) and /etc/hosts naming
both, so that a rendezvous by host name, gloo's choice of interface and Slurm's node names behave
as on two machines. The namespaces have no route anywhere else: traffic goes only between them.

    with TwoHosts.create() as hosts:          # pytest.skip(reason) where namespaces cannot be made
        p = hosts[1].popen([sys.executable, "-c", "..."], env=env)

Everything (processes left in the namespaces, the namespaces, the veth pair, /etc/netns/<name>)
is removed on exit, even after a failure. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and iproute2.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

NETNS_ETC = Path("/etc/netns")  # `ip netns exec NS` bind-mounts /etc/netns/NS/hosts over /etc/hosts


class CannotMakeHosts(RuntimeError):
    """Namespaces cannot be made here (no root, no iproute2, a kernel or sandbox refusing)."""


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise CannotMakeHosts(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")


@dataclass(frozen=True)
class Host:
    netns: str
    name: str  # host name inside, resolvable on both hosts
    address: str

    def command(self, cmd: Sequence[str]) -> list[str]:
        # A UTS namespace per command, so that `hostname` (and gloo, which binds the address its
        # host name resolves to) sees this host's name; exec keeps the pid the caller's child.
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--", "sh", "-c",
                'hostname "$0" && exec "$@"', self.name, *cmd]

    def popen(self, cmd: Sequence[str], **kwargs: object) -> subprocess.Popen:
        return subprocess.Popen(self.command(cmd), start_new_session=True, **kwargs)  # type: ignore[call-overload]

    def run(self, cmd: Sequence[str], timeout: float = 60, **kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(cmd), capture_output=True, text=True, timeout=timeout,
                              **kwargs)  # type: ignore[call-overload]

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def remove_stale() -> None:
    """Namespaces of an earlier test process that was killed before its teardown ran (named
    `mmtc-<pid>-...`; the pid is gone): their processes, veth pairs and /etc/netns files."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in (line.split()[0] for line in out.splitlines() if line.strip()):
        parts = name.split("-")
        if len(parts) != 4 or parts[0] != "mmtc" or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
            continue  # its test is still running
        except ProcessLookupError:
            pass
        Host(name, "", "").kill_all()
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(NETNS_ETC / name, ignore_errors=True)


class TwoHosts:
    """Host names `<prefix>1` and `<prefix>2` (a Slurm nodelist `<prefix>[1-2]`)."""

    def __init__(self, hosts: list[Host], prefix: str) -> None:
        self.hosts = hosts
        self.prefix = prefix

    def __getitem__(self, i: int) -> Host:
        return self.hosts[i]

    @property
    def nodelist(self) -> str:
        return f"{self.prefix}[1-2]"

    @classmethod
    @contextlib.contextmanager
    def create(cls) -> Iterator[TwoHosts]:
        if os.geteuid() != 0:
            raise CannotMakeHosts("network namespaces need root")
        if shutil.which("ip") is None or shutil.which("unshare") is None:
            raise CannotMakeHosts("iproute2's `ip` or util-linux's `unshare` is not installed")
        remove_stale()
        tag = f"{os.getpid() % 100000}{random.randint(0, 99)}"
        prefix = f"mmtc{tag}n"
        subnet = f"10.{random.randint(64, 250)}.{random.randint(0, 250)}"
        hosts = [Host(f"mmtc-{os.getpid()}-{tag}-{i}", f"{prefix}{i}", f"{subnet}.{i}") for i in (1, 2)]
        try:
            for h in hosts:
                _ip("netns", "add", h.netns)
            # interface names: at most 15 characters
            a, b = f"mv{tag}a", f"mv{tag}b"
            _ip("link", "add", a, "type", "veth", "peer", "name", b)
            for h, dev in zip(hosts, (a, b)):
                _ip("link", "set", dev, "netns", h.netns)
                _ip("-n", h.netns, "addr", "add", f"{h.address}/24", "dev", dev)
                _ip("-n", h.netns, "link", "set", dev, "up")
                _ip("-n", h.netns, "link", "set", "lo", "up")
                etc = NETNS_ETC / h.netns
                etc.mkdir(parents=True, exist_ok=True)
                (etc / "hosts").write_text("127.0.0.1 localhost\n"
                                           + "".join(f"{x.address} {x.name}\n" for x in hosts))
            probe = hosts[0].run(["hostname"])
            if probe.returncode != 0 or probe.stdout.strip() != hosts[0].name:
                raise CannotMakeHosts(f"cannot give a namespace its host name: {probe.stderr.strip()}")
            yield cls(hosts, prefix)
        finally:
            for h in hosts:
                h.kill_all()
            time.sleep(0.2)
            for h in hosts:
                subprocess.run(["ip", "netns", "del", h.netns], capture_output=True)  # takes its veth end along
                shutil.rmtree(NETNS_ETC / h.netns, ignore_errors=True)
