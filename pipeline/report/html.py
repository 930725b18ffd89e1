"""Renderings of the reports: a stage's Markdown, and the run's self-contained index.html (figures
embedded as data URIs, also saved under reports/plots/), plus the HTML helpers compare.py uses.
About 300 lines: one page's template and its sections, kept together so the page reads in order."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_write_text
from pipeline.core.hostinfo import environment
from pipeline.evaluation.evaluate import partial_note
from pipeline.evaluation.metrics import ALL as METRICS
from pipeline.evaluation.metrics import OFF_TARGET_M, TER_M, Metric
from pipeline.report.rundata import RunData, stage_stem

OFF_TARGET_NOTE = ("off-tgt%: hypotheses identified (lingua, among the run's languages) as another language than "
                   "the target; lower is better.")

Cell = str | tuple[str, str]  # text, or (text, css class)
NUMERIC = re.compile(r"^([+\-–]?\d|–$)")  # right-aligned: numbers, signed deltas, "–" for none

STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f3f3f3}td.n{text-align:right}.up{color:#067d17}.down{color:#b3261e}
.front{font-weight:bold;background:#fff4e0}pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:12px}
img{max-width:100%;border:1px solid #eee}.warn{color:#b3261e;font-weight:bold}code{font-size:12px}"""

# Marks every image as loaded or not once the page has loaded: a reader sees a warning instead of
# a silently missing figure, and the browser test reads the marks from the DOM.
IMAGE_CHECK = """<script>window.addEventListener("load",function(){var bad=0,imgs=document.querySelectorAll("img");
imgs.forEach(function(im){var ok=im.complete&&im.naturalWidth>0;im.setAttribute("data-loaded",ok?"1":"0");if(!ok)bad++;});
document.body.setAttribute("data-images",String(imgs.length));document.body.setAttribute("data-broken",String(bad));
if(bad){var p=document.createElement("p");p.className="warn";p.textContent=bad+" figure(s) failed to load";
document.body.insertBefore(p,document.body.firstChild);}});</script>"""


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def table(header: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    def cell(c: Cell, tag: str = "td") -> str:
        text, cls = (c, "") if isinstance(c, str) else c
        if tag == "td" and NUMERIC.match(text):
            cls = f"{cls} n".strip()
        return f"<{tag}{f' class={cls!r}' if cls else ''}>{esc(text)}</{tag}>"

    head = "".join(cell(h, "th") for h in header)
    body = "".join("<tr>" + "".join(cell(c) for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{STYLE}</style>{IMAGE_CHECK}</head><body>{body}</body></html>\n")


def figure(png: bytes, alt: str, file: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f"<figure><img src='{uri}' alt='{esc(alt)}'><figcaption><code>{esc(file)}</code></figcaption></figure>"


def num(x: float | None, nd: int = 1) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def delta(d: dict[str, float] | None, key: str, nd: int = 1, lower_is_better: bool = False) -> Cell:
    if not d or d.get(key) is None:
        return "–"
    v = d[key]
    good = v < 0 if lower_is_better else v > 0
    return (f"{v:+.{nd}f}", "" if v == 0 else ("up" if good else "down"))


def stage_markdown(rep: dict[str, Any]) -> str:
    st, tr = rep["stage"], rep["training"]
    end = st["end"] or {}
    why = (end.get("reason") or "?") + (f" ({end['monitor']})" if end.get("monitor") else "")
    lines = [f"# Stage {st['index']} `{st['name']}` of run `{rep['run']['name']}`", "",
             f"- checkpoint `{st['checkpoint']}`, steps {st['start_step']}–{st['end_step']}; ended by {why}",
             f"- trained on: {', '.join(st['directions'])}",
             f"- {tr['steps']} steps, {tr['tokens']} target tokens, {num(tr['wall_s'])} s, "
             f"{num(tr['tokens_per_s'], 0)} tokens/s, {tr['skipped_steps']} skipped steps",
             f"- compared with: {'stage ' + str(rep['previous_stage']['index']) + ' ' + rep['previous_stage']['name'] if rep['previous_stage'] else 'nothing (first stage)'}"]
    for split, sp in rep["splits"].items():
        ms = [m for m in METRICS if m.key in sp["signatures"]]
        lines += ["", f"## {split}", "", "| direction | group | " + "".join(f"{m.label} | Δ | " for m in ms)
                  + "loss | Δ | copy BLEU | copy chrF |", "|---|---|" + "---:|---:|" * (len(ms) + 1) + "---:|---:|"]
        for name, e in sp["directions"].items():
            d, cs = e["delta"] or {}, e["copy_source"] or {}
            lines.append(f"| {name} | {e['group'] or ''} | " + "".join(f"{e[m.key]:.2f} | {_md_d(d, m.key)} | " for m in ms)
                         + f"{e['loss']:.3f} | {_md_d(d, 'loss', 3)} | {num(cs.get('bleu'), 2)} | {num(cs.get('chrf'), 2)} |")
        for k, a in sp["averages"].items():
            d = a["delta"] or {}
            lines.append(f"| **avg {k}** ({a['directions']}) | | "
                         + "".join(f"{a[m.key]:.2f} | {_md_d(d, m.key)} | " if m.key in a else "| | " for m in ms) + "| | | |")
        note = partial_note(sp["directions"])
        lines += (["", f"**{note}**"] if note else []) + [""] + [
            f"{m.label}: `{sp['signatures'][m.key]}`  " for m in ms] + (["TER: lower is better."] if TER_M in ms else []) + (
            [OFF_TARGET_NOTE] if OFF_TARGET_M in ms else [])
    lines += _distill_markdown(rep.get("distillation"), st["end_step"])
    return "\n".join(lines) + "\n"


def _distill_markdown(dist: dict[str, Any] | None, end_step: int | None) -> list[str]:
    """LSSD's teachers at the stage's end: when each direction's froze (its convergence point)."""
    if not dist:
        return []
    out = ["", f"## LSSD teachers (gate {dist['gate']}, level {dist['level']}, weight {dist['weight']}, "
               f"distil when {dist['when']})", "",
           "| direction | teacher from step | best dev loss | updates in stage | frozen for steps |", "|---|---:|---:|---:|---:|"]
    for name, d in dist["directions"].items():
        out.append(f"| {name} | {d['teacher_step'] if d['teacher_step'] is not None else '–'} | "
                   f"{num(d['best_dev_loss'], 3)} | {d['updates_in_stage']} | "
                   f"{d['frozen_for_steps'] if d['frozen_for_steps'] is not None else '–'} |")
    return out + ["", f"A teacher frozen for many of the stage's steps (it ended at step {end_step}) marks a "
                      "direction that stopped improving on dev long before the end."]


def _md_d(d: dict[str, float], key: str, nd: int = 2) -> str:
    return f"{d[key]:+.{nd}f}" if key in d else "–"




def _static_tau(data: RunData) -> dict[str, float | None]:
    """Each stage's fixed temperature: the temperature sampler's τ; proportional sampling is τ = 1."""
    out: dict[str, float | None] = {}
    for st in data.recipe.resolved_stages():
        cfg = data.recipe.stage_sampling(st)
        out[st.name] = (float(cfg.params.get("temperature", 5.0)) if cfg.kind == "temperature"
                        else 1.0 if cfg.kind == "proportional" else None)
    return out


def _score_table(reports: Sequence[dict[str, Any]], split: str) -> str:
    reps = [r for r in reports if split in r["splits"]]
    header = ["direction", "group"]
    for r in reps:
        s = f"{r['stage']['index']}:{r['stage']['name']}"
        header += [h for m in _metrics(r, split) for h in (f"{s} {m.label}", "Δ")] + ([f"{s} loss", "Δ"] if split == "dev" else [])
    names = list(dict.fromkeys(n for r in reps for n in r["splits"][split]["directions"]))
    avgs = list(dict.fromkeys(k for r in reps for k in r["splits"][split]["averages"]))
    rows: list[list[Cell]] = []
    for key in names + [f"avg {k}" for k in avgs]:
        row: list[Cell] = [key, ""]
        for r in reps:
            sp = r["splits"][split]
            e = sp["averages"].get(key[4:]) if key.startswith("avg ") else sp["directions"].get(key)
            ms = _metrics(r, split)
            if e is None:
                row += ["–"] * (2 * len(ms) + (2 if split == "dev" else 0))
                continue
            row[1] = e.get("group") or ("" if key.startswith("avg ") else "–")
            for m in ms:
                row += [num(e.get(m.key), 2), delta(e["delta"], m.key, 2, lower_is_better=not m.higher_is_better)]
            if split == "dev":
                row += ([num(e["loss"], 3), delta(e["delta"], "loss", 3, lower_is_better=True)]
                        if "loss" in e else ["", ""])
        rows.append(row)
    sig = reps[-1]["splits"][split]["signatures"]
    note = partial_note(reps[-1]["splits"][split]["directions"])
    sigs = "<br>".join(f"{m.label} <code>{esc(sig[m.key])}</code>" for m in _metrics(reps[-1], split))
    return table(header, rows) + (f'<p class="warn">{esc(note)}</p>' if note else "") + f"<p>{sigs}</p>"


def _metrics(rep: dict[str, Any], split: str) -> list[Metric]:
    """The metrics a report's split was scored with (older reports: BLEU and chrF only)."""
    return [m for m in METRICS if m.key in rep["splits"][split]["signatures"]]


def _data_table(summary: dict[str, Any]) -> str:
    rows: list[list[Cell]] = []
    for name, d in summary.get("directions", {}).items():
        row: list[Cell] = [name, d.get("group") or ""]
        for split in ("train", "dev", "test"):
            s = d.get(split) or {}
            drops = ", ".join(f"{k} {v}" for k, v in (s.get("dropped") or {}).items())
            empty = "eval-only" if split == "train" and d.get("eval_only") else "–"
            row += [str(s.get("pairs", empty)), drops or ("none" if s else "–")]
        rows.append(row)
    return table(["direction", "group", "train pairs", "train dropped", "dev pairs", "dev dropped", "test pairs",
                  "test dropped"], rows)


def write_index(data: RunData, reports: Sequence[dict[str, Any]], figures: bool = True) -> Path:
    """The run's index.html. `figures=False` (eval.figures: false, at a stage end) leaves the
    figures out, and the PNGs of an earlier rendering in place: `mmtc report` draws them."""
    if figures:
        from pipeline.report import plots  # matplotlib: 0.6 s of a worker's start, paid only to draw

    out = data.run.path / "reports"
    pdir = out / "plots"
    made: dict[str, str] = {}

    def fig(name: str, make: Callable[[], Any], alt: str) -> str:
        f = make() if figures else None
        if f is None:
            return ""
        made[name] = figure(plots.save_png(f, pdir / f"{name}.png"), alt, f"plots/{name}.png")
        return made[name]

    bounds, groups = data.boundaries(), data.groups

    def curves() -> Any:
        marks = plots.event_markers(data.events, data.dev_rows)
        if data.dev_rows:
            return plots.loss_curves(data.dev_rows, "dev_loss", groups, bounds, marks, "dev loss per direction")
        rows = [{"step": r["step"], "nll": {n: v["nll"] for n, v in r["directions"].items()}} for r in data.train_rows]
        return plots.loss_curves(rows, "nll", groups, bounds, marks,
                                 "training NLL per direction (no dev losses: train.eval_every is 0)")

    body = [f"<h1>Run <code>{esc(data.recipe.name)}</code></h1><p><code>{esc(data.run.path.resolve())}</code>"
            f" · recipe {esc(data.meta.get('recipe'))} · created {esc(data.meta.get('created'))}</p>", "<h2>Stages</h2>"]
    srows: list[list[Cell]] = []
    for st in data.stages:
        end = st.end or {}
        state = "?" if st.end_step is not None else "running" if st.started else "not started"
        why = (end.get("reason") or state) + (f" ({end['monitor']})" if end.get("monitor") else "")
        srows.append([f"{st.index}: {st.name}", f"{st.start_step}–{st.end_step if st.end_step is not None else '…'}",
                      ", ".join(st.directions), why, ", ".join(f"{k}={v}" for k, v in (end.get("values") or {}).items()
                                                             if not isinstance(v, (dict, list))),
                      st.tag or "–"])
    body.append(table(["stage", "steps", "directions", "ended by", "values", "checkpoint"], srows))
    links = [f"<a href='{stem}.{ext}'>{stem}.{ext}</a>" for r in reports
             for stem in [stage_stem(r["stage"]["index"], r["stage"]["name"])] for ext in ("json", "md")]
    body.append(f"<p>Stage reports: {' · '.join(links) or 'none yet'}</p>")
    for split in ("test", "dev"):
        if any(split in r["splits"] for r in reports):
            body += [f"<h2>BLEU and chrF on {split}, per stage (Δ: against the previous stage)</h2>",
                     _score_table(reports, split), fig(f"scores-{split}", lambda s=split: plots.scores_by_stage(reports, s),
                                                      f"{split} scores per stage")]
    body += ["<h2>Dev loss</h2>", fig("dev-loss", curves, "loss curves per direction")]
    body += ["<h2>Sampling distribution</h2>",
             fig("sampling", lambda: plots.sampling(data.train_rows, groups, bounds,
                                              plots.tau_series(data.train_rows, _static_tau(data))),
                 "sampling distribution")
             or "<p>no training rows logged yet</p>"]
    if data.sim_rows:
        body += ["<h2>Gradient similarity</h2>", fig("grad-similarity", lambda: plots.grad_similarity(data.sim_rows),
                                                      "gradient cosine heatmap")]
    drows = [[f"{r['stage']['index']}: {r['stage']['name']}", name, str(d["teacher_step"]), num(d["best_dev_loss"], 3),
              str(d["updates_in_stage"]), str(d["frozen_for_steps"])]
             for r in reports if r.get("distillation") for name, d in r["distillation"]["directions"].items()]
    if drows:
        body += ["<h2>LSSD teachers: when each direction's froze</h2>",
                 table(["stage", "direction", "teacher from step", "best dev loss", "updates in stage",
                        "frozen for steps (to the stage's end)"], drows)]
    trows = [[f"{r['stage']['index']}: {r['stage']['name']}", str(r["training"]["steps"]), str(r["training"]["tokens"]),
              num(r["training"]["wall_s"]), num(r["training"]["tokens_per_s"], 0),
              ", ".join(f"{s} {num(v.get('eval_seconds'))} s" for s, v in r["splits"].items())] for r in reports]
    body += ["<h2>Throughput, wall time, hardware</h2>",
             table(["stage", "steps", "target tokens", "train wall s", "tokens/s", "evaluation"], trows),
             fig("throughput", lambda: plots.throughput(data.train_rows, bounds), "tokens per second")]
    final = data.finals.get(max(data.finals)) if data.finals else {}
    trained = {"python": data.meta.get("python"), "platform": data.meta.get("platform"),
               "processes": final.get("world"), "ZeRO stage": final.get("zero_stage"),
               "precision": data.recipe.train.precision, "deepspeed config": data.recipe.deepspeed.config,
               **data.meta.get("hardware", {})}  # runs created before run.json held it show less
    body += ["<h3>Training</h3>", table(["", ""], [[k, str(v)] for k, v in trained.items()]),
             "<h3>This report was generated with</h3>", table(["", ""], [[k, v] for k, v in environment().items()])]
    body += ["<h2>Data</h2>", f"<p>manifest <code>{esc(data.summary.get('manifest'))}</code></p>",
             _data_table(data.summary), "<h2>Resolved recipe</h2>",
             f"<details><summary>config.yaml</summary><pre>{esc(data.run.config.read_text())}</pre></details>"]
    if not figures:
        body.insert(1, "<p><em>Figures are not drawn at stage ends in this run (<code>eval.figures: false</code>): "
                       f"<code>mmtc report {esc(data.run.path)}</code> draws them.</em></p>")
    for stale in pdir.glob("*.png") if pdir.is_dir() and figures else []:
        if stale.stem not in made:
            stale.unlink()  # a figure of an earlier version of this report that has no data now
    path = out / "index.html"
    # Atomic: a browser refreshing during a stage end never sees half a page.
    atomic_write_text(path, page(f"mmtc report: {data.recipe.name}", "\n".join(b for b in body if b)))
    return path


def _compare_tables(doc: dict[str, Any]) -> list[tuple[str, list[str], list[list[Cell]]]]:
    """(title, header, rows) of the comparison, shared by its Markdown and HTML."""
    names = list(doc["directions"])
    avgs = list(dict.fromkeys(k for r in doc["runs"] for k in r["averages"]))
    front = {p["label"]: [m for m in ("bleu", "chrf") if p["front"][m]] for p in doc["pareto"] or []}
    cols = [f"{n} ({doc['directions'][n] or '-'})" for n in names] + [f"avg {k}" for k in avgs]
    tables = []
    rows: list[list[Cell]] = []
    for r in doc["runs"]:
        cls = "front" if front.get(r["label"]) and not doc["seed_groups"] else ""
        cells = [r["directions"][n] for n in names] + [r["averages"].get(k) for k in avgs]
        rows.append([(r["label"], cls), r["stage"]] + [_pair(c) for c in cells]
                    + ([" ".join(f"{m} ★" for m in front.get(r["label"], []))] if front and not doc["seed_groups"]
                       else []))
    pareto_col = ["Pareto-optimal"] if front and not doc["seed_groups"] else []
    tables.append((f"BLEU / chrF per direction on {doc['split']}", ["run", "stage", *cols, *pareto_col], rows))
    if "off_target" in doc.get("metrics", []):  # the zero-shot failure BLEU alone hides: output in the wrong language
        rows = [[r["label"], r["stage"]] + [num(c.get("off_target") if c else None, 1) for c in
                                            [r["directions"][n] for n in names] + [r["averages"].get(k) for k in avgs]]
                for r in doc["runs"]]
        tables.append((f"Off-target rate (%) per direction on {doc['split']}: {OFF_TARGET_NOTE}", ["run", "stage", *cols],
                       rows))
    if doc["seed_groups"]:
        rows = []
        for g in doc["seed_groups"]:
            cells = [g["directions"][n] for n in names] + [g["averages"].get(k) for k in avgs]
            rows.append([(g["label"], "front" if front.get(g["label"]) else ""), str(len(g["runs"]))]
                        + [_pair(c, std=True) for c in cells] + [" ".join(f"{m} ★" for m in front.get(g["label"], []))])
        tables.append(("Runs that differ only in seed: mean ± std (BLEU / chrF)",
                       ["group", "runs", *cols, "Pareto-optimal"], rows))
    sig = doc["significance"]
    for m in _doc_metrics(doc) if sig else ():
        rows = []
        for lab, per in sig["runs"].items():
            row: list[Cell] = [lab]
            for n in names:
                v = per[n][m.key]
                better = v["delta"] > 0 if m.higher_is_better else v["delta"] < 0
                row.append((f"{v['delta']:+.2f} [{v['ci'][0]:+.2f}, {v['ci'][1]:+.2f}] p={v['p']:.3g}",
                            ("up" if better else "down") if v["significant"] else ""))
            rows.append(row)
        tables.append((f"{m.label} difference from {sig['baseline']}: Δ [95% CI] and "
                       f"p (two-sided paired bootstrap, {sig['samples']} resamples; marked where p < 0.05, "
                       "exactly where the interval excludes 0" + (f"; {m.label}: lower is better" if not m.higher_is_better
                                                                   else "") + ")", ["run", *names], rows))
    return tables


def _doc_metrics(doc: dict[str, Any]) -> list[Metric]:
    keys = doc.get("metrics") or ["bleu", "chrf"]  # comparisons written before chrF++ and TER
    return [m for m in METRICS if m.key in keys]


def _pair(c: Any, std: bool = False) -> str:
    if c is None:
        return "–"
    if not std:
        return f"{c['bleu']:.2f} / {c['chrf']:.2f}"
    return " / ".join(f"{c[m][0]:.2f}" + (f" ± {c[m][1]:.2f}" if c[m][1] is not None else "") for m in ("bleu", "chrf"))


def compare_markdown(doc: dict[str, Any]) -> str:
    lines = [f"# Comparison of {len(doc['runs'])} runs on {doc['split']}", "",
             *[f"{m.label} `{doc['signatures'][m.key]}`  " for m in _doc_metrics(doc)]]
    for title, header, rows in _compare_tables(doc):
        lines += ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for row in rows:
            cells = [c if isinstance(c, str) else (f"**{c[0]}**" if c[1] else c[0]) for c in row]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Runs", "", "| run | method | checkpoint |", "|---|---|---|"]
    lines += [f"| {r['label']} | {r.get('method', '')} | {r['checkpoint']} |" for r in doc["runs"]]
    if doc["pareto"]:
        lines += ["", "★: Pareto-optimal on (HRL average, LRL average): no other run is at least as good on both and "
                  "better on one. Figure: `plots/pareto.png`."]
    return "\n".join(lines) + "\n"


def compare_page(doc: dict[str, Any], png: bytes | None) -> str:
    body = [f"<h1>Comparison of {len(doc['runs'])} runs on {esc(doc['split'])}</h1>",
            "<p>" + "<br>".join(f"{m.label} <code>{esc(doc['signatures'][m.key])}</code>" for m in _doc_metrics(doc))
            + "</p>"]
    for title, header, rows in _compare_tables(doc):
        body += [f"<h2>{esc(title)}</h2>", table(header, rows)]
    if png is not None:
        body += ["<h2>HRL against LRL average (Pareto-optimal runs starred and joined)</h2>",
                 figure(png, "Pareto front", "plots/pareto.png")]
    body.append("<h2>Runs</h2>" + table(["run", "method", "path", "checkpoint", "seed"], [
        [r["label"], r.get("method", ""), r["path"], r["checkpoint"], str(r["seed"])] for r in doc["runs"]]))
    return page("mmtc compare", "\n".join(body))
