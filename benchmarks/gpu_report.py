"""The two Python steps of benchmarks/gpu_check.sh: the hardware record and the closing summary.

    python benchmarks/gpu_report.py hardware OUT/hardware.json     # nvidia-smi, torch, CUDA, packages
    python benchmarks/gpu_report.py summary OUT STATUS.tsv         # OUT/summary.md from each part's JSON

STATUS.tsv has one line a part: name, status, seconds, JSON file name (in OUT). The summary reads
whatever JSON a part left, also when the part failed or ran out of time (method_overhead.py writes
after each configuration), and says so.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

# What the parts import beyond torch (pyproject's dependencies and the benchmarks' peers).
PACKAGES = ["deepspeed", "transformers", "ctranslate2", "sentencepiece", "sacrebleu", "yaml", "numpy", "scipy",
            "jsonschema", "datasets", "lingua", "matplotlib", "tqdm"]
SMI_FIELDS = "name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,pcie.link.gen.max"


def smi(*args: str) -> str:
    if not shutil.which("nvidia-smi"):
        return "nvidia-smi not found"
    try:
        p = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "nvidia-smi timed out"
    return (p.stdout if p.returncode == 0 else f"nvidia-smi exit {p.returncode}: {p.stderr}").strip()


def packages() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            with warnings.catch_warnings():  # jsonschema warns on __version__
                warnings.simplefilter("ignore")
                found[name] = str(getattr(importlib.import_module(name), "__version__", "present"))
        except Exception as e:  # noqa: BLE001  (a broken install is as missing as an absent one)
            found[name] = f"missing ({type(e).__name__})"
    return found


def hardware(dest: Path) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from machine import hardware as line

    rec: dict[str, object] = {"hardware": line(), "python": sys.version.split()[0], "executable": sys.executable,
                              "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                              "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                              "cuda_available": torch.cuda.is_available(), "cpu_cores": os.cpu_count(),
                              "cpu": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        rec["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
                      "multiprocessors": p.multi_processor_count, "count": torch.cuda.device_count()}
    rec["nvidia_smi"] = smi(f"--query-gpu={SMI_FIELDS}", "--format=csv")
    # -q in full is a few hundred lines: its header and the sections a reader compares machines by.
    keep = ("Driver Version", "CUDA Version", "Product Name", "Product Architecture", "Persistence Mode",
            "MIG Mode", "Current", "Total", "Max Clocks", "Graphics", "SM", "Memory", "Power Limit",
            "Current Power Limit", "Max Power Limit", "Compute Mode", "Virtualization Mode", "ECC Mode")
    rec["nvidia_smi_q"] = [x.rstrip() for x in smi("-q").splitlines() if x.strip().startswith(keep)][:80]
    rec["packages"] = packages()
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(rec, indent=1))
    gpu = rec.get("gpu") or {}
    print(f"{rec['hardware']}; torch {rec['torch']} (CUDA {rec['torch_cuda']}, cuDNN {rec['cudnn']}); "
          f"GPU {gpu.get('name', 'none')} {gpu.get('memory_gib', '')} GiB, capability {gpu.get('capability', '-')}")
    print(f"nvidia-smi: {rec['nvidia_smi']}")
    print("packages: " + ", ".join(f"{k} {v}" for k, v in rec["packages"].items()))


def headline(name: str, d: dict) -> list[str]:
    """A part's numbers, in a few lines."""
    if name == "hardware":
        gpu = d.get("gpu") or {}
        missing = [k for k, v in d.get("packages", {}).items() if str(v).startswith("missing")]
        return [f"{d.get('hardware')}; torch {d.get('torch')}, CUDA {d.get('torch_cuda')}, cuDNN {d.get('cudnn')}; "
                f"{gpu.get('memory_gib', '?')} GiB, capability {gpu.get('capability', '?')}",
                f"missing packages: {', '.join(missing) or 'none'}"]
    if name.startswith("throughput"):
        lines = [f"{d['preset']} {d['precision']} on {d.get('device', 'cpu')}, {d['target_tokens_per_step']:.0f} target "
                 f"tokens a step; measured matmul peak {d['matmul_peak_gflops'] / 1000:.1f} TFLOP/s"]
        for row, r in d["rows"].items():
            mfu = f", MFU {100 * r['mfu']:.1f}%" if "mfu" in r else ""
            lines.append(f"{row}: {r['target_tokens_per_s']:,.0f} tok/s{mfu}")
        lines += [f"{k} / {d['best_peer']}: {v:.2f}" for k, v in d["ratio_vs_best_peer"].items()]
        return lines
    if name in ("distill", "surgery"):
        sps = d["seconds_per_step"]
        base = sps.get("plain")
        return [f"{d['steps']} steps, {d['precision']}; plain {base:.4f} s/step" if base else "no plain run"] + [
            f"{k}: {v:.4f} s/step, ×{v / base:.2f}" for k, v in sps.items() if k != "plain" and base]
    if name == "decoding":
        lines = [f"{d['preset']}, batch {d['batch']}, {d['new_tokens']} tokens, device {d.get('device', 'cpu')}, "
                 f"CTranslate2 on {d.get('ct2_device', 'cpu') or 'none (not run)'}"]
        for beam, r in d["results"].items():
            ct2 = ", ".join(f"{k[4:-11]} {v:.1f}" for k, v in r.items() if k.startswith("ct2_") and k.endswith("_sent_per_s"))
            lines.append(f"{beam}: mmtc {r['mmtc_sent_per_s']:.1f} sent/s, HF Pegasus {r['hf_pegasus_sent_per_s']:.1f}, "
                         f"MarianMT {r['hf_marian_sent_per_s']:.1f} (ratio {r['ratio']:.2f}); identical "
                         f"{r['identical_outputs']}" + (f"; CTranslate2 {ct2}" if ct2 else ""))
        return lines
    return [json.dumps(d)[:200]]


def summary(out: Path, status: Path) -> None:
    parts = [line.split("\t") for line in status.read_text().splitlines() if line.strip()] if status.is_file() else []
    hw = out / "hardware.json"
    first = headline("hardware", json.loads(hw.read_text()))[0] if hw.is_file() else "hardware: not recorded"
    md = ["# GPU check", "", f"Hardware: {first}", "", "| part | status | seconds | file |", "| --- | --- | --- | --- |"]
    md += [f"| {n} | {s} | {t} | {f} |" for n, s, t, f in parts]
    for n, s, _t, f in parts:
        md += ["", f"## {n} ({s})", ""]
        path = out / f
        if not f or not path.is_file():
            md.append("no results file")
            continue
        try:
            md += [f"- {x}" for x in headline(n, json.loads(path.read_text()))]
        except Exception as e:  # noqa: BLE001  (a half-written or unexpected JSON must not cost the summary)
            md.append(f"could not read {f}: {type(e).__name__}: {e}")
    text = "\n".join(md) + "\n"
    (out / "summary.md").write_text(text)
    print(text)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "hardware":
        hardware(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "summary":
        summary(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
