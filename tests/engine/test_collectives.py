"""Which errors count as a lost peer: the texts gloo and NCCL raise, quoted from real failures."""

import subprocess
import sys

import pytest
import torch.distributed as dist

from pipeline.engine.collectives import is_collective_failure

LOST = [
    # rank 0 stopped (SIGSTOP) during a checkpoint's all_reduce, seen in CI on 2026-12-03
    "Application timeout caused pair closure",
    # a killed peer's socket
    "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.77.0.2]:30293",
    "[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 45000ms for recv "
    "operation to complete",
]


@pytest.mark.parametrize("text", LOST)
def test_gloo_texts_of_a_lost_peer_count(text):
    assert is_collective_failure(RuntimeError(text))


def test_other_errors_do_not_count():
    assert not is_collective_failure(RuntimeError("shape mismatch: [4, 8] against [8, 4]"))
    assert not is_collective_failure(ValueError("Connection closed by peer"))  # not from a transport


def test_a_backend_error_counts_whatever_it_says():
    assert is_collective_failure(dist.DistBackendError("NCCL error in: ..., unhandled system error"))


GROUP_TIMEOUTS = """
import torch
from deepspeed.utils import groups
import torch.distributed as dist
from pipeline.engine.ds_engine import setup_distributed
setup_distributed(1)
for g in (dist.group.WORLD, groups._clone_world_group(), dist.new_group(ranks=[0])):
    print("timeout", g._get_backend(torch.device("cpu")).options._timeout.total_seconds())
"""


def test_every_group_deepspeed_makes_waits_the_collective_timeout(mmtc_env):
    """Gradient clipping and ZeRO reduce over DeepSpeed's clone of the world group, made with
    dist.new_group and no timeout: it must wait MMTC_COLLECTIVE_TIMEOUT too, not torch's 30 minutes."""
    proc = subprocess.run([sys.executable, "-c", GROUP_TIMEOUTS], env=dict(mmtc_env, MMTC_COLLECTIVE_TIMEOUT="7"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [x.split()[1] for x in proc.stdout.splitlines() if x.startswith("timeout ")] == ["7.0"] * 3, proc.stdout
