"""DeepSpeed's checkpoint files outside a running engine: the float32 weights gathered from a
tag's ZeRO shards, and a tag's universal checkpoint (a resume on another world size)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

import pipeline.engine.ds_engine  # noqa: F401  (picks DeepSpeed's accelerator before it is imported)


def zero_consolidated(tag_dir: Path) -> dict[str, torch.Tensor]:
    """Float32 weights gathered from the ZeRO shards of a tag (DeepSpeed's zero_to_fp32)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)


UNIVERSAL = "universal"  # a committed tag's universal checkpoint: <tag>/universal/


def to_universal(tag_dir: Path) -> Path:
    """DeepSpeed's universal checkpoint of a committed ZeRO-1/2/3 tag (ds_to_universal: each
    parameter's fp32 weight, exp_avg and exp_avg_sq whole, in zero/<name>/, no world size left in
    them), made once and returned: `<tag>/universal`. In this process, on the caller's rank alone
    (the others wait for it: ds_to_universal reads every rank's shard).

    Inside the tag, so it goes when the tag is pruned; discovery and verification read only the
    files COMMIT.json lists, so it is neither a tag nor a damaged file to them. It is written under
    `<tag>/.universal.tmp/` and renamed into place complete (ds_to_universal also drops a
    `latest_universal` pointer beside its output: in the temporary folder, gone with it). A
    leftover temporary folder is removed first: DeepSpeedCheckpoint walks the tag recursively, and
    a half-written copy of mp_rank_00_model_states.pt in it would read as a second model rank."""
    import argparse
    import io
    import shutil

    from deepspeed.checkpoint import ds_to_universal

    out = tag_dir / UNIVERSAL
    if out.is_dir():  # complete: it only ever appears by the rename below
        return out
    work = tag_dir / ".universal.tmp"
    shutil.rmtree(work, ignore_errors=True)
    args = argparse.Namespace(
        input_folder=str(tag_dir), output_folder=str(work / UNIVERSAL),
        # In-process and serial: no process pool forked from a rank holding a process group.
        num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
        # Our model records no UNIVERSAL_CHECKPOINT_INFO (there is no tensor parallelism to undo):
        # the converter then wants the minimal one injected.
        inject_missing_state=True)
    log = io.StringIO()
    try:
        # Its progress lines and bars would interleave with the trainer's output.
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            ds_to_universal.main(args)
        os.replace(work / UNIVERSAL, out)
    except Exception as exc:
        last = [x for x in log.getvalue().splitlines() if x.strip()][-1:]
        raise RuntimeError(f"ds_to_universal failed on {tag_dir.name}: {type(exc).__name__}: {exc}"
                           + (f" (after: {last[0].strip()[:200]})" if last else "")) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
