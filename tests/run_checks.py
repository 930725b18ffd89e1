"""What the exact-resume, Slurm and two-host tests compare: a run's metric rows, its final tag's
tensors, and the waiting on a run that trains in another process (or a Slurm job)."""

import contextlib
import json
import re
import subprocess
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

COMPARED = ("step", "stage", "lr", "loss", "nll", "grad_norm", "directions", "p", "dev_loss", "train_nll")


def metric_rows(run: Path, from_step: int) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in COMPARED if k in r} for r in rows if r["step"] >= from_step]


def final_tag(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "LATEST").read_text().strip()


def all_tensors(obj, prefix=""):
    """Every tensor in a nested checkpoint structure, by path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(all_tensors(v, f"{prefix}.{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(all_tensors(v, f"{prefix}[{i}]"))
    return out


def zero_tensors(tag_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(tag_dir.glob("*.pt")):
        if f.name.startswith("rank_state"):
            continue
        state = torch.load(f, map_location="cpu", weights_only=False)
        if isinstance(state, dict):
            state = {k: v for k, v in state.items() if k not in ("ds_config", "ds_version", "recipe")}
        out.update(all_tensors(state, f.name))
    return out


def assert_equals_uninterrupted(run_dir: Path, ref: Path) -> None:
    """Final parameters and optimizer state equal bit for bit, the same metric rows, a test report."""
    a, b = zero_tensors(final_tag(ref)), zero_tensors(final_tag(run_dir))
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs from the uninterrupted run"
    assert metric_rows(run_dir, 0) == metric_rows(ref, 0)
    assert (run_dir / "eval" / final_tag(run_dir).name / "test.json").is_file()


def wait_for(what: str, check, timeout: float, poll: float = 0.2):
    end = time.time() + timeout
    while time.time() < end:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def last_step(run_dir: Path) -> tuple[int, str]:
    """The last logged training step and its stage (0, "" before the first)."""
    try:
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    except (OSError, json.JSONDecodeError):
        return 0, ""  # not there yet, or a line half written
    rows = [r for r in rows if "loss" in r]
    return (rows[-1]["step"], rows[-1]["stage"]) if rows else (0, "")


Wrap = Callable[[Sequence[str]], list[str]]  # a client command, made to run where slurmctld is reachable


def job_info(job: str, env: dict[str, str], wrap: Wrap = list) -> dict[str, str]:
    out = subprocess.run(wrap(["scontrol", "show", "job", "-o", job]), env=env, capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def job_log(run_dir: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((run_dir / "slurm").glob("*.out")))


def wait_finished(job: str, env: dict[str, str], run_dir: Path, timeout: float = 180,
                  wrap: Wrap = list) -> dict[str, str]:
    def done():
        info = job_info(job, env, wrap)
        return info if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL") else None
    try:
        info = wait_for(f"job {job} to finish", done, timeout, poll=1.0)
    except AssertionError:
        raise AssertionError(f"{job_info(job, env, wrap)}\n{job_log(run_dir)}") from None
    assert info["JobState"] == "COMPLETED", f"{info}\n{job_log(run_dir)}"
    return info


def events(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]


def preempted_tag(log: str) -> str:
    """The checkpoint the warned job saved, from the trainer's own line in the job log."""
    m = re.search(r"preempted: saved at step (\d+)", log)
    assert m, f"the job was not preempted (did the warning arrive after the run ended?):\n{log}"
    tags = re.findall(r"resume: from (step0*" + m.group(1) + r"-\S+)", log)
    assert tags, log
    return tags[-1]


def assert_preempted_event(ev: list[dict], tag: str) -> None:
    pre = [e for e in ev if e["event"] == "preempted"]
    assert [(e["signal"], e["checkpoint"]) for e in pre] == [("SIGUSR1", tag)], \
        f"events.jsonl should keep the preemption (it was saved as {tag}): {ev}"


CANT_INSTALL = 3  # local-cluster.sh: no root (or no apt) to install and run Slurm
LOCAL_CLUSTER = Path(__file__).resolve().parents[1] / "slurm" / "local-cluster.sh"


@contextlib.contextmanager
def local_cluster(env: dict[str, str], state: Path):
    """slurm/local-cluster.sh started with `env` (its MMTC_SLURM_* settings; state under `state`),
    yielding `env` with SLURM_CONF, stopped on exit; a warning and a skip where it cannot run."""
    proc = subprocess.run([str(LOCAL_CLUSTER), "start"], env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode == CANT_INSTALL:
        reason = f"no local Slurm cluster: {proc.stderr.strip()}"
        warnings.warn(reason, stacklevel=1)  # shown in pytest's summary even without -rs
        pytest.skip(reason)
    logs = "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted((state / "log").glob("slurm*.log")))
    assert proc.returncode == 0, f"local-cluster.sh start failed:\n{proc.stdout}\n{proc.stderr}\n{logs}"
    env = dict(env, SLURM_CONF=str(state / "etc" / "slurm.conf"))
    try:
        yield env
    finally:
        subprocess.run([str(LOCAL_CLUSTER), "stop"], env=env, capture_output=True, timeout=120)
