"""One Slurm task (run by `srun` in the batch script): `python -m pipeline.launch.slurm_task RUN_DIR [--until-stage S]`.

srun starts one task per GPU (or per CPU slot) on every node, with no launcher, ssh or hostfile:
each task turns Slurm's description of itself into the variables torch.distributed reads, then
trains. Whether to resume is decided here: a requeued job, or the next job of a stage chain,
finds a committed checkpoint in the run directory and continues from it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping

from pipeline.core import preemption

# Slurm job ids grow without bound; ports must stay below the ephemeral range (32768+ on Linux),
# where the kernel would hand them to other sockets.
PORT_BASE = 15000
PORT_SPAN = 15000


class SlurmEnvError(RuntimeError):
    pass


def _split_top(expr: str) -> list[str]:
    """Split on the commas outside brackets: `a[1,3],b` -> `a[1,3]`, `b`."""
    parts, depth, cur = [], 0, ""
    for ch in expr:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def expand_hostlist(expr: str) -> list[str]:
    """A Slurm hostlist (`node[01-03,07],gpu7`, `rack[1-2]-n[1-2]`) as host names, in order.

    The same expansion as `scontrol show hostnames`, without needing the command on the node.
    """
    hosts: list[str] = []
    for part in _split_top(expr):
        m = re.match(r"^([^\[]*)\[([^\]]+)\](.*)$", part)
        if m is None:
            hosts.append(part)
            continue
        prefix, ranges, rest = m.groups()
        for item in ranges.split(","):
            lo, _, hi = item.partition("-")
            width = len(lo)  # zero padding is kept: node[01-03] -> node01
            for n in range(int(lo), int(hi or lo) + 1):
                hosts.extend(expand_hostlist(f"{prefix}{n:0{width}d}{rest}"))
    return hosts


def expand_tasks_per_node(spec: str) -> list[int]:
    """SLURM_TASKS_PER_NODE (`2(x3),1`) as one count per node: [2, 2, 2, 1]."""
    out: list[int] = []
    for item in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if m is None:
            raise SlurmEnvError(f"cannot read tasks per node {spec!r}")
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def master_port(job_id: str) -> int:
    # Every task of the job computes the same port with no communication; the next job (or the
    # same job requeued) starts after this one's processes have gone.
    return PORT_BASE + int(job_id) % PORT_SPAN


def torch_env(env: Mapping[str, str]) -> dict[str, str]:
    """RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT from a task's Slurm
    variables (the step's own when srun set them, else the job's). MMTC_MASTER_ADDR and
    MMTC_MASTER_PORT override the derived address and port."""

    def get(*names: str) -> str:
        for name in names:
            if env.get(name):
                return env[name]
        raise SlurmEnvError(f"{' or '.join(names)} is not set: run this under srun inside a Slurm job")

    world = int(get("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"))
    per_node = expand_tasks_per_node(get("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"))
    node = int(env.get("SLURM_NODEID", "0"))
    if sum(per_node) != world or node >= len(per_node):
        raise SlurmEnvError(f"tasks per node {per_node} do not match {world} tasks (node {node})")
    hosts = expand_hostlist(get("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"))
    return {
        "RANK": get("SLURM_PROCID"),
        "LOCAL_RANK": get("SLURM_LOCALID"),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(per_node[node]),
        "MASTER_ADDR": env.get("MMTC_MASTER_ADDR") or hosts[0],
        "MASTER_PORT": env.get("MMTC_MASTER_PORT") or str(master_port(get("SLURM_JOB_ID"))),
    }


def stage_done(run_dir: str, stage: str) -> bool:
    """Whether the run already got past `stage` (its final checkpoint, or a later stage's, is
    committed): a stage job started again (requeued after it finished, say) then has nothing to do."""
    from pipeline.checkpoint.commit import discover
    from pipeline.rundir.layout import RunDir

    run = RunDir(run_dir)
    names = [s.name for s in run.load_config().resolved_stages()]
    found, _ = discover(run.checkpoints, deep=False)
    if found is None or stage not in names:
        return False  # an unknown stage is reported by the trainer, with the valid names
    index, at = names.index(stage), int(found.meta["stage_index"])
    return at > index or (at == index and bool(found.meta.get("final")))


def has_checkpoint(run_dir: str) -> bool:
    from pipeline.checkpoint.commit import discover
    from pipeline.rundir.layout import RunDir

    return discover(RunDir(run_dir).checkpoints, deep=False)[0] is not None


def main(argv: list[str] | None = None) -> int:
    # First, before the slow imports: a warning signal arriving during start-up must set the flag
    # (the trainer stops after its first step) rather than kill the task by USR1's default action.
    preemption.install()
    ap = argparse.ArgumentParser(prog="python -m pipeline.launch.slurm_task", description=__doc__)
    ap.add_argument("run_dir")
    ap.add_argument("--until-stage", help="stop after this stage (one job per stage)")
    ap.add_argument("--allow-change", default="", help="comma-separated: world, corpus, recipe")
    args = ap.parse_args(argv)
    os.environ.update(torch_env(os.environ))
    main_rank = os.environ["RANK"] == "0"
    if args.until_stage and stage_done(args.run_dir, args.until_stage):
        if main_rank:
            print(f"mmtc: stage {args.until_stage} of {args.run_dir} is already done; nothing to do", flush=True)
        return 0
    resume = has_checkpoint(args.run_dir)
    if main_rank:
        print(f"mmtc: rank 0 of {os.environ['WORLD_SIZE']} at {os.environ['MASTER_ADDR']}:"
              f"{os.environ['MASTER_PORT']}; {'resuming' if resume else 'starting'} {args.run_dir}", flush=True)
    from pipeline.launch.worker import leave, train_main
    from pipeline.rundir.lock import hold

    allow = frozenset(x for x in args.allow_change.split(",") if x)
    if not main_rank:  # rank 0 holds the run's writer lock for all the ranks of the job
        code = train_main(args.run_dir, resume=resume, allow=allow, until_stage=args.until_stage)
    else:
        with hold(args.run_dir):
            code = train_main(args.run_dir, resume=resume, allow=allow, until_stage=args.until_stage)
    leave(code)
    return code  # not reached


if __name__ == "__main__":
    sys.exit(main())
