import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Keep test processes to the machine's cores and away from the user's cache.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _pin_parallel_worker() -> None:
    """Under pytest-xdist (`-n N`), worker i keeps cores i, i+N, ...: its training processes inherit
    the affinity and size their threads by it (core.hostinfo.usable_cores), so N tests share the
    machine without oversubscribing it; the ranks of a multi-process test share their worker's
    cores (slower, and equal bits: each rank still has one thread). Tests that need the machine to
    themselves (clusters, namespaces, wall-clock bounds) are marked `exclusive` and run afterwards
    without -n (the README's command)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    mine = cores[int(worker.removeprefix("gw")) % count::count]
    if mine:
        os.sched_setaffinity(0, mine)


_pin_parallel_worker()


def pytest_configure(config):
    """Under -n, an `exclusive` test would share the machine with another worker's test: refuse
    unless the selection leaves them out (they run afterwards, alone: the README's command)."""
    if (config.getoption("numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER")
            and "not exclusive" not in (config.option.markexpr or "")):
        raise pytest.UsageError('-n runs tests side by side: add -m "not exclusive", then run -m exclusive '
                                "without -n (the README's test command)")


@pytest.fixture(scope="session")
def mmtc_env(tmp_path_factory):
    env = dict(os.environ)
    env["MMTC_CACHE"] = str(tmp_path_factory.mktemp("mmtc-cache"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, mmtc_env):
    """A tiny run trained 40 steps (no evaluation while training), then `mmtc eval --split test
    --beam 1 --max-sentences 32`: (root with the corpus, run dir, the evaluated tag)."""
    import subprocess

    from corpus_factory import tiny_recipe, write_corpus

    root = tmp_path_factory.mktemp("tiny-run")
    recipe = tiny_recipe(root, write_corpus(root))
    run = root / "run"
    for args in (["run", str(recipe), "--run-dir", str(run), "--set", "eval.splits=[]", "--set", "eval.stage_end=false"],
                 ["eval", str(run), "--split", "test", "--beam", "1", "--max-sentences", "32"]):
        proc = subprocess.run([sys.executable, "-m", "pipeline", *args], env=mmtc_env, cwd=root, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return root, run, next((run / "eval").iterdir()).name


@pytest.fixture(scope="session")
def two_rank_ref(tmp_path_factory, mmtc_env):
    """The two-stage recipe trained uninterrupted as 2 ranks on this host (`mmtc run --nproc 2`), the
    reference of the Slurm and two-host runs: (root with the corpus, recipe, run dir, the step the
    hrl stage ended at)."""
    import json
    import subprocess

    from corpus_factory import LONGER_MIX, two_stage_recipe, write_corpus

    root = tmp_path_factory.mktemp("two-rank")
    recipe = two_stage_recipe(root, write_corpus(root))
    ref = root / "ref"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(recipe), "--run-dir", str(ref), "--nproc", "2",
                           *LONGER_MIX], env=mmtc_env, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = [json.loads(x) for x in (ref / "events.jsonl").read_text().splitlines()]
    switch = next(e["step"] for e in events if e["event"] == "stage_end" and e["stage"] == "hrl")
    return root, recipe, ref, switch


@pytest.fixture(scope="module")
def hosts():
    """Two "hosts" (network namespaces, tests/netns_hosts.py) for a module's tests; a warning and a
    skip with the reason where they cannot be made."""
    import warnings

    from netns_hosts import CannotMakeHosts, TwoHosts

    try:
        with TwoHosts.create() as made:
            yield made
    except CannotMakeHosts as exc:
        warnings.warn(f"no multi-host test: {exc}", stacklevel=1)
        pytest.skip(f"network namespaces cannot be made here: {exc}")
