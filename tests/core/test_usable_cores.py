"""Threads are sized by the cores a process may use (its affinity), not by the machine's count."""

import os
import subprocess
import sys

import pytest

PROBE = ("from pipeline.core.hostinfo import usable_cores; import torch;"
         "from pipeline.evaluation.translate_file import TranslateJob, worker_jobs;"
         "print(usable_cores(), worker_jobs(TranslateJob(run_dir='r', tgt='b'), 1)[0].threads)")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_a_process_narrowed_to_one_core_counts_one():
    first = min(os.sched_getaffinity(0))
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         preexec_fn=lambda: os.sched_setaffinity(0, {first})).stdout.split()
    assert out == ["1", "1"]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this platform")
def test_unnarrowed_it_is_the_affinity_set():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == str(len(os.sched_getaffinity(0)))
