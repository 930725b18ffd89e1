"""`mmtc status RUN_DIR`: where a run stands, read from its files alone."""

from __future__ import annotations

import json

from pipeline.checkpoint import commit as ckpt
from pipeline.rundir.layout import RunDir


def run_status(run: RunDir, events_shown: int = 8) -> str:
    recipe = run.load_config()
    stages = [s.name for s in recipe.resolved_stages()]
    events = run.read_jsonl(run.events)
    metrics = run.read_jsonl(run.metrics)
    ended = {e["stage"]: e for e in events if e.get("event") == "stage_end"}
    lines = [f"run {run.path}"]
    train_rows = [m for m in metrics if "loss" in m]
    step = train_rows[-1]["step"] if train_rows else 0
    lines.append(f"step {step} of at most {recipe.train.max_steps}")
    current = next((s for s in stages if s not in ended), None)
    for s in stages:
        if s in ended:
            e = ended[s]
            why = e["reason"] + (f" ({e['monitor']})" if e.get("monitor") else "")
            lines.append(f"  stage {s}: done at step {e['step']}, {why}")
        elif s == current:
            lines.append(f"  stage {s}: current")
        else:
            lines.append(f"  stage {s}: to come")
    found, notes = ckpt.discover(run.checkpoints, deep=False)
    if current is None:
        last_saved = found is not None and found.meta.get("final") and found.meta.get("stage") == stages[-1]
        ended_early = found is not None and found.meta.get("final") and found.meta.get("step", 0) >= recipe.train.max_steps
        if last_saved or ended_early:
            lines.append("  finished")
        else:
            lines.append("  NOT finished: training reached the end but its final checkpoint did not commit "
                         f"(save_failed); `mmtc resume {run.path}` trains again from "
                         f"{found.tag if found else 'the start'}")
    lines.append(f"last committed checkpoint: {found.tag if found else 'none'}")
    lines += [f"  note: {n}" for n in notes]
    dev_rows = [m for m in metrics if "dev_loss" in m]
    if dev_rows:
        last = dev_rows[-1]
        lines.append(f"dev loss at step {last['step']}: " +
                     ", ".join(f"{k} {v:.3f}" for k, v in last["dev_loss"].items()))
        if last.get("monitors"):
            lines.append(f"monitors: {json.dumps(last['monitors'])}")
    if train_rows:
        r = train_rows[-1]
        lines.append(f"train loss {r['loss']:.3f} at step {r['step']}, {r['tokens_per_s']:.0f} tok/s, "
                     f"skipped steps {r.get('skipped_steps', 0)}")
    if events:
        lines.append("last events:")
        for e in events[-events_shown:]:
            rest = {k: v for k, v in e.items() if k not in ("step", "event", "monitors", "directions")}
            lines.append(f"  step {e['step']}: {e['event']} {json.dumps(rest, ensure_ascii=False)}")
    return "\n".join(lines)
