"""Report figures (matplotlib, Agg): each function takes plain rows and returns a Figure, or None
when the run logged nothing to draw. `save_png` writes the file and returns its bytes for embedding."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # reports are written by headless trainers and CI; never open a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

# Past this many directions a per-direction legend is unreadable: colour by group instead.
LEGEND_LIMIT = 12
GROUP_COLOURS = {"hrl": "tab:blue", "lrl": "tab:red"}


def save_png(fig: Figure, path: Path) -> bytes:
    """Write `fig` as PNG to `path` and return the bytes; metadata is dropped so that the same
    data gives the same file."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def _colours(names: Sequence[str], groups: Mapping[str, str | None]) -> dict[str, Any]:
    if len(names) <= LEGEND_LIMIT:
        cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
        return {n: cmap(i % cmap.N) for i, n in enumerate(names)}
    return {n: GROUP_COLOURS.get(groups.get(n) or "", "tab:gray") for n in names}


def _style(name: str, groups: Mapping[str, str | None]) -> str:
    return "--" if groups.get(name) == "lrl" else "-"


def _boundaries(ax: Any, stages: Sequence[tuple[str, int, int]]) -> None:
    """Dashed lines where one stage hands over to the next, labelled with the stage names."""
    top = ax.get_ylim()[1]
    left, right = ax.get_xlim()
    for i, (name, start, _end) in enumerate(stages):
        if i > 0:
            ax.axvline(start, color="black", linestyle=":", linewidth=1)
        if start < right:  # a label left of the first logged step would stretch the figure
            ax.text(max(start, left), top, f" {name}", va="top", ha="left", fontsize=8, color="dimgray")
    ax.set_xlim(left, right)


def _legend(ax: Any, names: Sequence[str], groups: Mapping[str, str | None]) -> None:
    if len(names) <= LEGEND_LIMIT:
        ax.legend(fontsize=7, ncol=2, loc="best")
        return
    handles = [plt.Line2D([], [], color=c, label=g) for g, c in GROUP_COLOURS.items()]
    ax.legend(handles=handles, fontsize=7, loc="best")


def event_markers(events: Sequence[Mapping[str, Any]], dev_rows: Sequence[Mapping[str, Any]]
                  ) -> list[tuple[int, str, str]]:
    """Stage ends by a monitor, monitors firing before their stage could end (min_steps, or an
    `all:` still waiting), and notable events, as (step, label, kind) for `loss_curves`."""
    out: list[tuple[int, str, str]] = []
    for e in events:
        if e.get("event") == "stage_end" and e.get("reason") == "monitor":
            out.append((e["step"], f"{e.get('monitor')} ends {e['stage']}", "monitor"))
        elif e.get("event") in ("resume", "preempted", "skipped_step", "save_failed"):
            out.append((e["step"], e["event"], e["event"]))
    fired: set[tuple[Any, str]] = set()
    for r in dev_rows:
        for mon, state in (r.get("monitors") or {}).items():
            if isinstance(state, dict) and state.get("fired") and (r.get("stage"), mon) not in fired:
                fired.add((r.get("stage"), mon))
                if not any(m[0] == r["step"] and m[2] == "monitor" for m in out):
                    out.append((r["step"], f"{mon} fired", "monitor"))
    return sorted(out)


def tau_series(rows: Sequence[Mapping[str, Any]], static: Mapping[str, float | None]) -> list[tuple[int, float]]:
    """τ at each log step: as logged by a schedule policy, else the stage's fixed one (if any)."""
    out = []
    for r in rows:
        t = (r.get("policy") or {}).get("tau", static.get(r.get("stage", "")))
        if t is not None:
            out.append((r["step"], float(t)))
    return out


def loss_curves(rows: Sequence[Mapping[str, Any]], key: str, groups: Mapping[str, str | None],
                stages: Sequence[tuple[str, int, int]], markers: Sequence[tuple[int, str, str]],
                title: str) -> Figure | None:
    """Per-direction curves of rows[i][key][direction]; markers are (step, label, kind) with kind
    'monitor' (a monitor fired or ended a stage) or another event name (resume, preempted, ...)."""
    names = list(dict.fromkeys(n for r in rows for n in r.get(key, {})))
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(10, 4.5))
    colours = _colours(names, groups)
    for n in names:
        pts = [(r["step"], r[key][n]) for r in rows if r.get(key, {}).get(n) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], _style(n, groups), color=colours[n], linewidth=1.2,
                marker="." if len(pts) < 40 else None, label=f"{n} ({groups.get(n) or '-'})")
    ax.set_xlabel("step")
    ax.set_ylabel("NLL per target token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _boundaries(ax, stages)
    low, high = ax.get_ylim()
    seen: set[str] = set()
    for step, label, kind in markers:
        monitor = kind == "monitor"
        shown = "monitor" if monitor else kind
        ax.plot([step], [high if monitor else low], "v" if monitor else "^", markersize=9 if monitor else 6,
                color="darkorange" if monitor else "purple", clip_on=False,
                label=None if shown in seen else ("monitor fired" if monitor else kind))
        seen.add(shown)
        if monitor:
            ax.annotate(label, (step, high), xytext=(3, -24), textcoords="offset points", fontsize=7,
                        color="darkorange")
    ax.set_ylim(low, high)
    _legend(ax, names, groups)
    fig.tight_layout()
    return fig


def sampling(rows: Sequence[Mapping[str, Any]], groups: Mapping[str, str | None],
             stages: Sequence[tuple[str, int, int]], tau: Sequence[tuple[int, float]]) -> Figure | None:
    """Stacked p over the directions (and the loss weights when the policy weighs losses), with τ
    on a second axis where the stage has one. A row logged at step s covers the steps since the
    previous row, hence the 'pre' steps."""
    rows = [r for r in rows if r.get("p")]
    if not rows:
        return None
    panels = [("p", "sampling distribution p")]
    if any(r.get("loss_weights") for r in rows):
        panels.append(("loss_weights", "loss weights"))
    names = list(dict.fromkeys(n for r in rows for k, _ in panels for n in r.get(k) or {}))
    colours = _colours(names, groups)
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.6 * len(panels)), squeeze=False)
    steps = np.array([r["step"] for r in rows])
    for ax, (key, title) in zip(axes[:, 0], panels):
        values = np.array([[float((r.get(key) or {}).get(n, 0.0)) for r in rows] for n in names])
        ax.stackplot(steps, values, colors=[colours[n] for n in names], labels=names, step="pre", alpha=0.85)
        ax.set_ylim(0, 1)
        ax.set_xlim(steps.min(), steps.max())
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        _boundaries(ax, stages)
        if tau and key == "p":
            twin = ax.twinx()
            twin.step([t[0] for t in tau], [t[1] for t in tau], where="pre", color="black", linewidth=1.5,
                      label="τ")
            twin.set_ylabel("temperature τ")
            twin.legend(loc="center right", fontsize=7)
        if len(names) <= LEGEND_LIMIT:
            ax.legend(loc="upper left", fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    return fig


def scores_by_stage(reports: Sequence[Mapping[str, Any]], split: str) -> Figure | None:
    """Grouped bars: BLEU and chrF per direction (and the group averages), one bar per stage."""
    reports = [r for r in reports if split in r["splits"]]
    if not reports:
        return None
    names = list(dict.fromkeys(n for r in reports for n in r["splits"][split]["directions"]))
    avgs = list(dict.fromkeys(k for r in reports for k in r["splits"][split]["averages"]))
    labels = names + [f"avg {k}" for k in avgs]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.8 * len(labels) * max(1, len(reports)) / 2 + 4), 7))
    width = 0.8 / len(reports)
    x = np.arange(len(labels))
    for ax, metric in zip(axes, ("bleu", "chrf")):
        for i, rep in enumerate(reports):
            sp = rep["splits"][split]
            vals = [sp["directions"].get(n, {}).get(metric, np.nan) for n in names]
            vals += [sp["averages"].get(k, {}).get(metric, np.nan) for k in avgs]
            ax.bar(x + (i - (len(reports) - 1) / 2) * width, vals, width,
                   label=f"stage {rep['stage']['index']} {rep['stage']['name']}")
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("BLEU" if metric == "bleu" else "chrF")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title(f"{split}: scores of each stage-final checkpoint")
    fig.tight_layout()
    return fig


def grad_similarity(rows: Sequence[Mapping[str, Any]]) -> Figure | None:
    """One heatmap per task set (the tasks change with the stage): the mean pairwise cosine over
    the logged steps."""
    sets: dict[tuple[str, ...], list[tuple[int, np.ndarray]]] = {}
    for r in rows:
        g = r["grad_cosine"]
        sets.setdefault(tuple(g["tasks"]), []).append((r["step"], np.array(g["cosine"], dtype=float)))
    if not sets:
        return None
    fig, axes = plt.subplots(1, len(sets), figsize=(4.6 * len(sets) + 0.8, 4.2), squeeze=False)
    image = None
    for ax, (tasks, mats) in zip(axes[0], sets.items()):
        mean = np.mean([m for _, m in mats], axis=0)
        image = ax.imshow(mean, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
        if len(tasks) <= 10:
            for (i, j), v in np.ndenumerate(mean):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(v) > 0.6 else "black")
        ax.set_title(f"steps {mats[0][0]}-{mats[-1][0]} ({len(mats)} logged)", fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="gradient cosine")
    return fig


def throughput(rows: Sequence[Mapping[str, Any]], stages: Sequence[tuple[str, int, int]]) -> Figure | None:
    rows = [r for r in rows if r.get("tokens_per_s") is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.plot([r["step"] for r in rows], [r["tokens_per_s"] for r in rows], linewidth=1, color="tab:green")
    ax.set_xlabel("step")
    ax.set_ylabel("target tokens / s")
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    _boundaries(ax, stages)
    fig.tight_layout()
    return fig


def pareto(points: Sequence[Mapping[str, Any]], metrics: Sequence[str] = ("bleu", "chrf")) -> Figure:
    """HRL average against LRL average per run; points have label, front ({metric: bool}) and
    per metric {'hrl': x, 'lrl': y} (optionally 'hrl_std', 'lrl_std' for seed groups)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        front = sorted((p[metric]["hrl"], p[metric]["lrl"]) for p in points if p["front"][metric])
        if len(front) > 1:
            ax.plot([f[0] for f in front], [f[1] for f in front], "-", color="darkorange", linewidth=1.5,
                    label="Pareto front", zorder=1)
        for p in points:
            m = p[metric]
            on = p["front"][metric]
            ax.errorbar(m["hrl"], m["lrl"], xerr=m.get("hrl_std"), yerr=m.get("lrl_std"),
                        fmt="*" if on else "o", markersize=13 if on else 7,
                        color="darkorange" if on else "tab:gray", mfc="darkorange" if on else "none", zorder=2)
            ax.annotate(p["label"], (m["hrl"], m["lrl"]), xytext=(5, 4), textcoords="offset points", fontsize=8)
        name = "BLEU" if metric == "bleu" else "chrF"
        ax.set_xlabel(f"HRL average {name}")
        ax.set_ylabel(f"LRL average {name}")
        ax.grid(alpha=0.3)
        ax.margins(0.15)
        if len(front) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
