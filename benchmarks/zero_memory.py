"""Memory per rank with 2 processes for ZeRO 0, 1, 2, 3 and ZeRO-3 with CPU offload: the bytes of
parameters, gradients and optimizer state each rank holds, against ZeRO's 1/N expectation, and
the process's resident and peak host memory.

    python benchmarks/zero_memory.py                  # the `base` preset, fp32
    python benchmarks/zero_memory.py --preset big --steps 10
    python benchmarks/zero_memory.py --table          # the README tables from the results file

Each configuration is a short 2-process `mmtc run` of the demo recipe (single stage, no evaluation).
At each log step the trainer logs every rank's resident and peak host memory (on GPUs, peak
allocated GPU memory) and `held_bytes`: what `Engine.held_bytes` counts from the tensors the rank
holds right after the step's backward, before the optimizer step (see its docstring for what each
key includes). On a CPU the host figures hold everything the process holds together (torch, the
corpus, DeepSpeed's buffers), which hides the partitioning; the held bytes show it.

The expectation, for P parameters on N ranks in fp32 with Adam (Rajbhandari et al. 2020, "ZeRO:
Memory Optimizations Toward Training Trillion Parameter Models", Fig. 1, with the paper's 2 bytes
of fp16 parameters and gradients at 4 in fp32 and its K = 12 bytes of optimizer state at the 8 of
Adam's two moments, fp32 needing no master copy), bytes per rank:

    stage       parameters   gradients   optimizer state
    ZeRO-0      4P           4P          8P
    ZeRO-1      4P           4P          8P / N          (P_os)
    ZeRO-2      4P           4P / N      8P / N          (P_os+g)
    ZeRO-3      4P / N       4P / N      8P / N          (P_os+g+p)

In bf16/fp16 parameters and gradients take 2P, and the optimizer state is K = 12P: the fp32
master copy (4P) plus the moments (8P), divided by N from ZeRO-1 on. DeepSpeed's ZeRO optimizers
keep their fp32 master partition in fp32 training too (a copy of the rank's 1/N of the
parameters: `fp32_master`, expected 4P / N, not in the paper's count). Partitions are padded to
an alignment, and ZeRO-1/2 keep the gradients of whole parameter tensors (those their partition
touches), so a rank's share can exceed 1/N a little. ZeRO-3 keeps the parameters of at most
`stage3_param_persistence_threshold` elements (1e5 by default) whole on every rank besides their
partition: DeepSpeed's own expectation for its parameters is 4P / N + 4 P_small (written as
`expected_ds_bytes`); and it allocates its reduction buckets at start-up (`buckets`:
`reduce_bucket_size` elements, 5e8 by default, sized by the config and not by the model; on a
CPU mostly untouched pages, so not resident). With optimizer offload ZeRO-3 keeps a second fp32
gradient partition (the one the CPU optimizer reads). Offloaded state is counted where it lives.
Run at least 2 steps: before the first optimizer step there is no optimizer state.

Writes benchmarks/results/zero_memory.json, keyed by preset (other presets' entries are kept).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from machine import hardware

CONFIGS = ["zero0", "zero1", "zero2", "zero3", "zero3_offload"]
STAGE = {"zero0": 0, "zero1": 1, "zero2": 2, "zero3": 3, "zero3_offload": 3}
COMPARED = ("params", "grads", "optimizer", "fp32_master")  # the held_bytes keys with an expectation
MB = 2**20
PERSISTENCE = 100_000  # DeepSpeed's default stage3_param_persistence_threshold (elements, inclusive)


def expected_bytes(stage: int, n_params: int, world: int, precision: str) -> dict[str, float]:
    """Bytes per rank of ZeRO's model states (the module docstring's table)."""
    half = precision in ("bf16", "fp16")
    unit = 2 if half else 4  # bytes per parameter and per gradient
    p, n = float(n_params), float(world)
    return {
        "params": unit * p / (n if stage >= 3 else 1),
        "grads": unit * p / (n if stage >= 2 else 1),
        "optimizer": 8 * p / (n if stage >= 1 else 1),
        # the paper's master copy in half precision; DeepSpeed's ZeRO optimizers keep one in fp32 as well
        "fp32_master": 4 * p / (n if stage >= 1 else 1) if half or stage >= 1 else 0.0,
    }


def parameter_count(run_dir: Path) -> tuple[int, int]:
    """The run's model's parameters, and those in tensors small enough for ZeRO-3 to keep whole,
    counted on a model built on the meta device (no memory)."""
    import torch

    from pipeline.data.tokenizer import Tokenizer
    from pipeline.model.transformer import build_model
    from pipeline.rundir.layout import RunDir

    run = RunDir(run_dir)
    tok = Tokenizer(run.tokenizer)
    with torch.device("meta"):
        model = build_model(run.load_config(), tok.vocab_size, tok.pad_id)
    sizes = [p.numel() for p in model.parameters()]
    return sum(sizes), sum(n for n in sizes if n <= PERSISTENCE)


def measure(name: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One configuration's run: the last log row's memory fields, or {"skipped": why}."""
    run_dir = out / name
    sets = ["stages=[]", f"deepspeed.config={name}", f"model.preset={args.preset}", f"train.max_steps={args.steps}",
            f"train.log_every={args.steps}", "train.eval_every=0", "eval.splits=[]", "eval.stage_end=false",
            f"train.precision={args.precision}", *args.set]
    cmd = [sys.executable, "-m", "pipeline", "run", args.recipe, "--run-dir", str(run_dir), "--overwrite",
           "--nproc", str(args.nproc)]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        if name == "zero3_offload":  # needs DeepSpeedCPUAdam, which DeepSpeed compiles on first use
            tail = [x for x in proc.stdout.splitlines() if x.strip()][-3:]
            return {"skipped": f"exit {proc.returncode}: " + " | ".join(tail)[-400:]}
        raise RuntimeError(f"{name}: mmtc run failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "peak_host_mb" in r][-1]
    result = {k: last[k] for k in ("host_mb", "peak_host_mb", "peak_gpu_mb", "held_bytes") if k in last}
    result["run_dir"] = str(run_dir)
    return result


def add_expectations(entry: dict[str, Any]) -> None:
    """Each configuration's expected bytes per rank and every rank's measured/expected ratios."""
    for name, r in entry["results"].items():
        if "held_bytes" not in r:
            continue
        exp = expected_bytes(STAGE[name], entry["parameters"], entry["world"], entry["precision"])
        r["expected_bytes"] = {k: round(v) for k, v in exp.items()}
        if STAGE[name] == 3:
            unit = exp["params"] * entry["world"] / entry["parameters"]
            r["expected_ds_bytes"] = {"params": round(exp["params"] + unit * entry["persistent_parameters"])}
        r["ratio"] = [{k: round(h[k] / exp[k], 4) if exp[k] else None for k in COMPARED} for h in r["held_bytes"]]


def markdown_table(entry: dict[str, Any]) -> str:
    """The README table of one preset's entry: per configuration the expected MB per rank, then
    each rank's held MB with measured/expected in brackets, its buckets and its resident size."""
    p, n = entry["parameters"], entry["world"]
    lines = [f"`{entry['preset']}` ({p / 1e6:.1f}M parameters), {entry['precision']}, {n} processes, "
             f"{entry['steps']} steps, {entry.get('hardware', '')}: MB per rank held after the last step's "
             "backward (`Engine.held_bytes`), [measured / expected]",
             "",
             "| config | rank | params | grads | Adam moments | fp32 master | buckets | other | host RSS |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in entry["results"].items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped'][:120]} |  |  |  |  |  |  |  |")
            continue
        if "held_bytes" not in r:
            lines.append(f"| {name} | no held_bytes in its metrics |  |  |  |  |  |  |  |")
            continue
        exp = r["expected_bytes"]
        lines.append(f"| {name} | expected | " + " | ".join(f"{exp[k] / MB:.1f}" for k in COMPARED) + " |  |  |  |")
        for rank, (h, ratio) in enumerate(zip(r["held_bytes"], r["ratio"])):
            cells = [f"{h[k] / MB:.1f}" + (f" [{ratio[k]:.2f}]" if ratio[k] is not None else "") for k in COMPARED]
            cells += [f"{h.get(k, 0) / MB:.1f}" for k in ("buckets", "other")]
            host = r.get("host_mb", [None] * n)[rank]
            cells.append("" if host is None else f"{host:.0f}")
            lines.append(f"| {name} | {rank} | " + " | ".join(cells) + " |")
    small = entry.get("persistent_parameters")
    z3 = [r for name, r in entry["results"].items() if STAGE[name] == 3 and "expected_ds_bytes" in r]
    if small is not None and z3:
        ds = z3[0]["expected_ds_bytes"]["params"]
        lines += ["", f"ZeRO-3 keeps the {small / 1e6:.2f}M parameters in tensors of at most {PERSISTENCE:.0e} elements "
                  f"whole on every rank besides their partition: DeepSpeed's expectation for its params is "
                  f"4P/N + 4P_small = {ds / MB:.1f} MB. Buckets: ZeRO's gradient-reduction buffers "
                  "(reduce_bucket_size), allocated, on a CPU mostly never touched."]
    return "\n".join(lines)


def load_results(path: Path) -> dict[str, Any]:
    """The results file keyed by preset (a file from before, one preset's entry, converted)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {data["preset"]: data} if "preset" in data and "results" in data else data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="stages/demo.yaml")
    ap.add_argument("--preset", default="base")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    ap.add_argument("--out", default="benchmarks/work/zero_memory")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--results", default="benchmarks/results/zero_memory.json")
    ap.add_argument("--table", action="store_true", help="print the tables of the results file and exit")
    args = ap.parse_args()
    dest = Path(args.results)
    stored = load_results(dest)
    if args.table:
        for entry in stored.values():
            if "parameters" in entry:
                print(markdown_table(entry) + "\n")
        return
    out = Path(args.out) / args.preset
    out.mkdir(parents=True, exist_ok=True)
    results = {name: measure(name, args, out) for name in args.configs}
    ran = [name for name, r in results.items() if "skipped" not in r]
    # On GPUs the peak allocation; on a CPU the resident size after the last step (the host peak
    # is set by start-up copies, not by what each ZeRO stage keeps).
    key = "peak_gpu_mb" if "peak_gpu_mb" in results[ran[0]] else "host_mb"
    base = max(results[ran[0]][key])
    print(f"{args.preset}, {args.precision}, {args.nproc} processes: {key} per rank")
    print(f"{'config':<15}" + "".join(f"{'rank ' + str(i):>10}" for i in range(args.nproc)) + f"{'saving':>10}")
    for name in ran:
        r = results[name][key]
        print(f"{name:<15}" + "".join(f"{x:>10.0f}" for x in r) + f"{base - max(r):>10.0f}")
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name:<15}skipped: {r['skipped']}")
    entry = {"preset": args.preset, "precision": args.precision, "steps": args.steps, "world": args.nproc,
             "hardware": hardware(), "measure": key, "results": results}
    entry["parameters"], entry["persistent_parameters"] = parameter_count(out / ran[0])
    add_expectations(entry)
    print()
    print(markdown_table(entry))
    stored[args.preset] = entry
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(stored, indent=1))
    print(f"written {dest} ({args.preset})")


if __name__ == "__main__":
    main()
