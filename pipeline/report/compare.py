"""`mmtc compare`: runs × directions (BLEU, chrF), HRL/LRL averages and their Pareto front; with a
baseline, a two-sided paired bootstrap per direction on the saved hypotheses (a 95% interval and a
p-value that agree: p < 0.05 exactly when the interval excludes 0); with --seeds, runs that differ only in seed as mean ± std.

Each run contributes the report of its last finished stage (written by `mmtc report` if missing).
Runs scored on different references or with different sacrebleu signatures are refused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.typed_yaml import to_plain
from pipeline.evaluation.langid import candidates_from_signature
from pipeline.evaluation.metrics import ALL, sacrebleu_metric
from pipeline.report.stage_report import (
    build_report,
    load_run_data,
    read_lines,
    saved_reports,
    sha256,
)
from pipeline.rundir.layout import RunDir

METRICS = ("bleu", "chrf")  # the score tables, the seed means and the Pareto front
NAMES = {m.key: m.label for m in ALL}


class CompareRefused(ValueError):
    pass


@dataclass
class RunResult:
    label: str
    path: Path
    report: dict[str, Any]
    split: dict[str, Any]  # report["splits"][split]
    config: dict[str, Any]  # the resolved recipe, plain

    def avg(self, group: str, metric: str) -> float | None:
        a = self.split["averages"].get(group)
        return None if a is None else a[metric]


def load_result(path: Path, split: str, label: str) -> RunResult:
    run = RunDir(path)
    data = load_run_data(run)
    done = [s for s in data.stages if s.tag]
    if not done:
        raise CompareRefused(f"{path}: no stage has finished (no stage-final checkpoint); nothing to compare")
    reports = {r["stage"]["index"]: r for r in saved_reports(data)}
    if done[-1].index not in reports:
        build_report(path)
        data = load_run_data(run)
        reports = {r["stage"]["index"]: r for r in saved_reports(data)}
    rep = reports[done[-1].index]
    if split not in rep["splits"]:
        raise CompareRefused(f"{path}: its corpus has no {split} split")
    return RunResult(label, path, rep, rep["splits"][split], to_plain(data.recipe))


def method_of(config: dict[str, Any]) -> str:
    """What balances a run, per stage: its sampler, and its surgery and distillation when on."""
    stages = config.get("stages") or [{"name": "main"}]
    out = []
    for st in stages:
        parts = []
        for key in ("sampling", "surgery", "distill"):
            sec = st.get(key) or config.get(key) or {}
            if key == "sampling":
                params = sec.get("params") or {}
                parts.append(sec.get("kind", "temperature") + (f" τ={params['temperature']}" if "temperature" in params
                                                               and sec.get("kind") == "temperature" else ""))
            elif sec.get("method", "none") != "none":
                extra = (f" gate={sec.get('gate', 'none')} w={sec.get('weight', 1.0)} when={sec.get('when', 'stalled')}"
                         if key == "distill" else "")
                parts.append(sec["method"] + extra)
        out.append(f"{st['name']}: " + ", ".join(parts) if len(stages) > 1 else ", ".join(parts))
    return " → ".join(out)


def labels_for(paths: Sequence[Path]) -> list[str]:
    """Shortest distinct path suffixes: runs/a/seed1 and runs/b/seed1 stay apart."""
    parts = [p.resolve().parts for p in paths]
    for k in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def _sig_diff(a: str, b: str) -> str:
    fa, fb = (dict(x.split(":", 1) for x in s.split("|") if ":" in x) for s in (a, b))
    keys = [k for k in dict.fromkeys([*fa, *fb]) if fa.get(k) != fb.get(k)]
    return ", ".join(f"{k}: {fa.get(k)} vs {fb.get(k)}" for k in keys)


def check_comparable(results: Sequence[RunResult]) -> None:
    """Same directions, the same references (by hash) and the same sacrebleu signatures, or a
    CompareRefused naming the first difference."""
    ref = results[0]
    for r in results[1:]:
        a, b = set(ref.split["directions"]), set(r.split["directions"])
        if a != b:
            raise CompareRefused(f"{ref.label} and {r.label} were evaluated on different directions: only in "
                                 f"{ref.label}: {sorted(a - b)}; only in {r.label}: {sorted(b - a)}")
        for name in sorted(a):
            x, y = ref.split["directions"][name], r.split["directions"][name]
            if (x["sentences"], x["references_sha256"]) != (y["sentences"], y["references_sha256"]):
                raise CompareRefused(
                    f"{ref.label} and {r.label} were evaluated on different test sets: {name} has "
                    f"{x['sentences']} references (sha256 {x['references_sha256'][:12]}) in {ref.label} and "
                    f"{y['sentences']} (sha256 {y['references_sha256'][:12]}) in {r.label}")
        for m in shared_metrics(results):
            s, t = ref.split["signatures"][m], r.split["signatures"][m]
            if s != t:
                raise CompareRefused(f"{ref.label} and {r.label} have different sacrebleu {NAMES[m]} signatures "
                                     f"({_sig_diff(s, t)}): {s!r} vs {t!r}")


def shared_metrics(results: Sequence[RunResult]) -> list[str]:
    """The metrics every run was scored with (runs evaluated before chrF++ and TER have BLEU and chrF)."""
    return [m.key for m in ALL if all(m.key in r.split["signatures"] for r in results)]


def target_language(direction: str) -> str:
    return direction.rsplit("-", 1)[-1]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Maximising both coordinates: a point is on the front unless another is at least as good in
    both and better in one. Equal points dominate neither, so both stay on the front."""
    return [not any(q[0] >= p[0] and q[1] >= p[1] and (q[0] > p[0] or q[1] > p[1]) for q in points)
            for p in points]


def _hyps(r: RunResult, name: str) -> list[str]:
    e = r.split["directions"][name]
    path = r.path / e["hypotheses"]
    if sha256(path) != e["hypotheses_sha256"]:
        raise CompareRefused(f"{path} changed since {r.label}'s report was written; run `mmtc report {r.path}`")
    return read_lines(path)


ALPHA = 0.05  # the significance level; the interval is the matching (1 - ALPHA) one


def bootstrap_test(diffs: Sequence[float], alpha: float = ALPHA) -> tuple[list[float], float, bool]:
    """Two-sided paired bootstrap test on the resampled differences Δ*_b (system − baseline):
    p = 2·min(#{Δ* ≤ 0}, #{Δ* ≥ 0}) / B (at most 1), and the (1 − alpha) percentile interval
    [Δ*_(k), Δ*_(B−1−k)] with k = ceil(alpha·B/2) − 1 in sorted order. With that k, p < alpha
    exactly when the interval excludes 0: one rule, so the p-value and the interval never disagree."""
    import math

    import numpy as np

    d = np.sort(np.asarray(diffs, dtype=np.float64))
    n = len(d)
    k = max(0, math.ceil(alpha * n / 2) - 1)
    ci = [float(d[k]), float(d[n - 1 - k])]
    p = min(1.0, 2.0 * min(int(np.sum(d <= 0)), int(np.sum(d >= 0))) / n)
    return ci, p, p < alpha


def paired_bootstrap(base: Sequence[str], systems: Sequence[tuple[str, Sequence[str]]], refs: Sequence[str],
                     samples: int = 1000, lang: str | None = None,
                     metric_keys: Sequence[str] = METRICS, languages: Sequence[str] = (),
                     ) -> dict[str, dict[str, dict[str, Any]]]:
    """{system: {metric: {score, delta, ci: [lo, hi], p, significant}}} against `base`: B paired
    resamples of the test sentences (the same for every system and metric; drawn from
    SACREBLEU_SEED or 12345, as sacrebleu's PairedTest), the corpus score of each, and
    `bootstrap_test` on the differences. sacrebleu's own bootstrap p-value tests a centred |Δ|
    one-sidedly and came out 2-3x smaller than a two-sided test; it is not used. `lang` picks
    BLEU's tokenizer as the evaluation did, `languages` off-target's candidates; TER's and
    off-target's deltas are lower-is-better."""
    import os

    import numpy as np

    metrics = {m: sacrebleu_metric(m, lang, languages) for m in metric_keys}
    seed = int(os.environ.get("SACREBLEU_SEED", "12345"))
    idx = np.random.default_rng(seed).choice(len(refs), size=(samples, len(refs)), replace=True)
    out: dict[str, dict[str, dict[str, Any]]] = {n: {} for n, _ in systems}
    for m, metric in metrics.items():
        def scored(hyps: Sequence[str], metric: Any = metric) -> tuple[float, np.ndarray]:
            stats = np.array(metric._extract_corpus_statistics(list(hyps), [list(refs)]), dtype="float32")
            full = float(metric._compute_score_from_stats(stats.sum(0)).score)
            return full, np.array([metric._compute_score_from_stats(s.sum(0)).score for s in stats[idx]])

        base_score, base_resampled = scored(base)
        for name, hyps in systems:
            score, resampled = scored(hyps)
            ci, p, significant = bootstrap_test(resampled - base_resampled)
            out[name][m] = {"score": round(score, 2), "delta": round(score - base_score, 2),
                            "ci": [round(ci[0], 2), round(ci[1], 2)], "p": round(p, 6), "significant": significant}
    return out


def seed_groups(results: Sequence[RunResult]) -> list[list[RunResult]]:
    """Runs whose resolved recipes are equal but for `seed` (and the run `name`)."""
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        key = json.dumps({k: v for k, v in r.config.items() if k not in ("seed", "name")}, sort_keys=True)
        groups.setdefault(key, []).append(r)
    return list(groups.values())


def _mean_std(xs: Sequence[float]) -> tuple[float, float | None]:
    import numpy as np

    return float(np.mean(xs)), (float(np.std(xs, ddof=1)) if len(xs) > 1 else None)


def summarise_groups(groups: Sequence[list[RunResult]]) -> list[dict[str, Any]]:
    out = []
    for g in groups:
        seeds = [r.config.get("seed") for r in g]
        entry: dict[str, Any] = {"label": f"{g[0].label} (seeds {', '.join(map(str, seeds))})" if len(g) > 1
                                 else g[0].label, "runs": [r.label for r in g], "seeds": seeds,
                                 "directions": {}, "averages": {}}
        for name in g[0].split["directions"]:
            entry["directions"][name] = {m: _mean_std([r.split["directions"][name][m] for r in g]) for m in METRICS}
        for k in g[0].split["averages"]:
            if all(r.avg(k, "bleu") is not None for r in g):
                entry["averages"][k] = {m: _mean_std([r.avg(k, m) for r in g]) for m in METRICS}  # type: ignore[misc]
        out.append(entry)
    return out


def _front(rows: Sequence[dict[str, Any]]) -> None:
    """Mark the Pareto-optimal rows (per metric) in place; rows need averages hrl and lrl."""
    for m in METRICS:
        pts = [(row[m]["hrl"], row[m]["lrl"]) for row in rows]
        for row, on in zip(rows, pareto_front(pts)):
            row.setdefault("front", {})[m] = on


def compare_runs(paths: Sequence[Path], out: Path, baseline: str | Path | None = None, seeds: bool = False,
                 split: str = "test", samples: int = 1000) -> Path:
    """Write compare.json, compare.md, compare.html and plots/pareto.png to `out`; returns the HTML."""
    # Here, not at the top: `mmtc --help` builds its parser from this module, and matplotlib is slow to load.
    from pipeline.report import plots
    from pipeline.report.html import compare_markdown, compare_page

    all_paths = list(paths)
    if baseline is not None and Path(baseline).resolve() not in [p.resolve() for p in all_paths]:
        all_paths.insert(0, Path(baseline))
    if len({p.resolve() for p in all_paths}) != len(all_paths):
        raise CompareRefused("a run directory is named twice")
    results = [load_result(p, split, lab) for p, lab in zip(all_paths, labels_for(all_paths))]
    check_comparable(results)
    directions = list(results[0].split["directions"])
    groups = {n: e["group"] for n, e in results[0].split["directions"].items()}
    tested = shared_metrics(results)
    doc: dict[str, Any] = {"split": split, "signatures": {m: results[0].split["signatures"][m] for m in tested},
                           "metrics": tested, "directions": groups,
                           "runs": [], "pareto": None, "significance": None, "seed_groups": None}
    for r in results:
        doc["runs"].append({"label": r.label, "path": str(r.path.resolve()), "stage": r.report["stage"]["name"],
                            "method": method_of(r.config),
                            "checkpoint": r.split["checkpoint"], "seed": r.config.get("seed"),
                            "directions": {n: {m: r.split["directions"][n][m] for m in tested} for n in directions},
                            "averages": {k: {m: a[m] for m in tested if m in a} for k, a in r.split["averages"].items()}})
    has_groups = all(k in results[0].split["averages"] for k in ("hrl", "lrl"))
    if seeds:
        doc["seed_groups"] = summarise_groups(seed_groups(results))
    if has_groups:
        source = doc["seed_groups"] or doc["runs"]
        points = []
        for s in source:
            a = s["averages"]
            point: dict[str, Any] = {"label": s["label"]}
            for m in METRICS:
                if doc["seed_groups"]:
                    point[m] = {"hrl": a["hrl"][m][0], "lrl": a["lrl"][m][0],
                                "hrl_std": a["hrl"][m][1], "lrl_std": a["lrl"][m][1]}
                else:
                    point[m] = {"hrl": a["hrl"][m], "lrl": a["lrl"][m]}
            points.append(point)
        _front(points)
        doc["pareto"] = points
    if baseline is not None:
        base = results[[p.resolve() for p in all_paths].index(Path(baseline).resolve())]
        others = [r for r in results if r is not base]
        sig: dict[str, Any] = {"baseline": base.label, "samples": samples, "runs": {r.label: {} for r in others}}
        candidates = candidates_from_signature(doc["signatures"]["off_target"]) if "off_target" in tested else []
        for name in directions:
            refs = read_lines(base.path / base.split["directions"][name]["references"])
            res = paired_bootstrap(_hyps(base, name), [(r.label, _hyps(r, name)) for r in others], refs, samples,
                                   target_language(name), tested, candidates)
            for lab, v in res.items():
                sig["runs"][lab][name] = v
        doc["significance"] = sig
    out.mkdir(parents=True, exist_ok=True)
    png = None
    if doc["pareto"]:
        png = plots.save_png(plots.pareto(doc["pareto"]), out / "plots" / "pareto.png")
    (out / "compare.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    (out / "compare.md").write_text(compare_markdown(doc))
    (out / "compare.html").write_text(compare_page(doc, png), encoding="utf-8")
    return out / "compare.html"
