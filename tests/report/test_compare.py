"""`mmtc compare` on three real runs that differ only in seed: the table, the Pareto marks, paired
bootstrap against a baseline (two-sided, recomputed from the resamples), seed groups, and refusals."""

import json
import shutil

import numpy as np
import pytest
from sacrebleu.metrics import BLEU, CHRF, TER

from pipeline.report.compare import (
    CompareRefused,
    bootstrap_test,
    compare_runs,
    labels_for,
    method_of,
    paired_bootstrap,
    pareto_front,
)
from pipeline.report.stage_report import read_lines

SAMPLES = 300


def final_report(run_dir):
    return json.loads((run_dir / "reports" / "stage-1-mix.json").read_text())


@pytest.fixture(scope="module")
def compared(seed_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    a, b, c = seed_runs
    page = compare_runs([b, c], out, baseline=a, seeds=True, samples=SAMPLES)
    return out, page, json.loads((out / "compare.json").read_text())


def test_table_holds_each_run_final_scores(compared, seed_runs):
    out, page, doc = compared
    assert page == out / "compare.html" and (out / "compare.md").is_file() and (out / "plots" / "pareto.png").is_file()
    assert [r["label"] for r in doc["runs"]] == ["a", "b", "c"]  # the baseline first
    for run, path in zip(doc["runs"], seed_runs):
        rep = final_report(path)["splits"]["test"]
        assert run["checkpoint"] == rep["checkpoint"] and run["stage"] == "mix"
        for name, e in rep["directions"].items():
            assert run["directions"][name] == {m: e[m] for m in ("bleu", "chrf", "chrfpp", "ter")}
        assert run["averages"]["lrl"]["chrf"] == rep["averages"]["lrl"]["chrf"]
    md = (out / "compare.md").read_text()
    assert "| run | stage | eng-rev (hrl)" in md and "avg hrl" in md and "avg lrl" in md
    assert "difference from a" in md and "p=" in md and "±" in md
    html = page.read_text()
    assert "data:image/png;base64," in html and "Pareto" in html


def test_seed_groups_report_mean_and_std(compared):
    _, _, doc = compared
    (group,) = doc["seed_groups"]  # a, b, c differ only in seed
    assert group["runs"] == ["a", "b", "c"] and group["seeds"] == [3, 4, 5]
    for name in doc["directions"]:
        for m in ("bleu", "chrf"):
            vals = [r["directions"][name][m] for r in doc["runs"]]
            mean, std = group["directions"][name][m]
            assert mean == pytest.approx(np.mean(vals)) and std == pytest.approx(np.std(vals, ddof=1))
    # With --seeds the scatter shows the group mean, which is alone and so on the front.
    assert [p["front"] for p in doc["pareto"]] == [{"bleu": True, "chrf": True}]


def test_pareto_marks_without_seed_groups(seed_runs, tmp_path):
    compare_runs(seed_runs, tmp_path)
    doc = json.loads((tmp_path / "compare.json").read_text())
    assert doc["significance"] is None and doc["seed_groups"] is None
    for m in ("bleu", "chrf"):
        pts = [(r["averages"]["hrl"][m], r["averages"]["lrl"][m]) for r in doc["runs"]]
        assert [p["front"][m] for p in doc["pareto"]] == pareto_front(pts)
        assert [(p[m]["hrl"], p[m]["lrl"]) for p in doc["pareto"]] == pts


def test_bootstrap_is_two_sided_on_the_same_resamples(compared, seed_runs):
    _, _, doc = compared
    sig = doc["significance"]
    assert sig["baseline"] == "a" and set(sig["runs"]) == {"b", "c"} and sig["samples"] == SAMPLES
    a, b, c = seed_runs
    metrics = {"bleu": BLEU(), "chrf": CHRF(), "chrfpp": CHRF(word_order=2), "ter": TER()}
    assert doc["metrics"] == list(metrics)
    for name in doc["directions"]:
        e = final_report(a)["splits"]["test"]["directions"][name]
        refs = read_lines(a / e["references"])
        idx = np.random.default_rng(12345).choice(len(refs), size=(SAMPLES, len(refs)), replace=True)

        def resampled(hyps, metric, refs=refs, idx=idx):
            return np.array([metric.corpus_score([hyps[i] for i in row], [[refs[i] for i in row]]).score
                             for row in idx])

        base = read_lines(a / e["hypotheses"])
        for i, (lab, path) in enumerate((("b", b), ("c", c)), start=1):
            hyps = read_lines(path / final_report(path)["splits"]["test"]["directions"][name]["hypotheses"])
            for m, metric in metrics.items():
                if m in ("chrfpp", "ter") and name != "eng-pig":
                    continue  # one direction is enough for the metrics added last; resampling by hand is slow
                got = sig["runs"][lab][name][m]
                d = resampled(hyps, metric) - resampled(base, metric)
                # two-sided: twice the smaller tail of the resampled differences beyond 0
                want = min(1.0, 2 * min((d <= 1e-9).sum(), (d >= -1e-9).sum()) / SAMPLES)
                assert got["p"] == pytest.approx(want, abs=5e-7)  # the report rounds p to 6 decimals
                assert got["delta"] == pytest.approx(metric.corpus_score(hyps, [refs]).score
                                                     - metric.corpus_score(base, [refs]).score, abs=0.006)
                assert got["significant"] == (got["p"] < 0.05) == (got["ci"][0] > 0 or got["ci"][1] < 0)
                assert doc["runs"][i]["directions"][name][m] == pytest.approx(got["score"], abs=0.011)


def test_bootstrap_test_by_hand():
    # 40 resampled differences: 3 at or below 0, 37 above
    diffs = [-0.5, -0.1, 0.0] + [0.1 * k for k in range(1, 38)]
    ci, p, significant = bootstrap_test(diffs)
    # k = ceil(0.05 * 40 / 2) - 1 = 0: the interval is [min, max]; p = 2 * min(3, 38) / 40
    assert ci == [-0.5, pytest.approx(3.7)] and p == pytest.approx(0.15) and not significant
    shifted = [x + 0.6 for x in diffs]  # all above 0: p = 0, the interval excludes 0
    ci, p, significant = bootstrap_test(shifted)
    assert p == 0.0 and significant and ci[0] == pytest.approx(0.1)
    # 1000 differences with 24 below 0: p = 0.048 < 0.05, and Δ*_(24) (k = 24) is the first above 0
    diffs = [-1.0] * 24 + [1.0] * 976
    ci, p, significant = bootstrap_test(diffs)
    assert p == pytest.approx(0.048) and significant and ci == [1.0, 1.0]
    diffs = [-1.0] * 25 + [1.0] * 975  # 25 below: p = 0.05, not below 0.05; Δ*_(24) = -1
    ci, p, significant = bootstrap_test(diffs)
    assert p == pytest.approx(0.05) and not significant and ci == [-1.0, 1.0]


def test_different_signatures_are_refused(seed_runs, tmp_path):
    b = shutil.copytree(seed_runs[1], tmp_path / "b")
    compare_runs([seed_runs[0], b], tmp_path / "ok")  # writes b's reports if they are not there yet
    path = b / "reports" / "stage-1-mix.json"
    path.write_text(path.read_text().replace("version:2.6.0", "version:2.4.0").replace(
        "tok:13a", "tok:intl"))
    with pytest.raises(CompareRefused, match=r"different sacrebleu BLEU signatures \(tok: 13a vs intl, version: "
                                             r"2\.[0-9.]+ vs 2\.4\.0\)"):
        compare_runs([seed_runs[0], b], tmp_path / "out")


def test_different_test_sets_are_refused(seed_runs, tmp_path):
    b = shutil.copytree(seed_runs[1], tmp_path / "b")
    shutil.rmtree(b / "reports", ignore_errors=True)
    config = b / "config.yaml"
    config.write_text(config.read_text().replace("  max_sentences: 20\n", "  max_sentences: 10\n"))
    with pytest.raises(CompareRefused, match=r"different test sets: eng-\w+ has 20 references .* and 10 "):
        compare_runs([seed_runs[0], b], tmp_path / "out")


def test_an_identical_system_is_not_significant():
    """sacrebleu's bootstrap gave p = 1/(n+1) for a copy of the baseline; the two-sided test gives 1."""
    refs = ["the cat sat on the mat", "a dog ran", "hello world there"] * 10
    hyps = ["the cat sat on a mat", "a dog runs", "hello world"] * 10
    res = paired_bootstrap(hyps, [("same", hyps), ("empty", [""] * 30)], refs, 200)
    assert res["same"]["bleu"]["p"] == 1.0 and res["same"]["bleu"]["ci"] == [0.0, 0.0]
    assert not res["same"]["bleu"]["significant"] and not res["same"]["chrf"]["significant"]
    assert res["empty"]["chrf"]["significant"] and res["empty"]["chrf"]["delta"] < 0


def test_labels_are_the_shortest_distinct_suffixes(tmp_path):
    paths = [tmp_path / "x" / "seed1", tmp_path / "y" / "seed1", tmp_path / "y" / "seed2"]
    assert labels_for(paths) == ["x/seed1", "y/seed1", "y/seed2"]


def test_run_dirs_copied_without_checkpoints_still_compare(seed_runs, tmp_path):
    """Run directories fetched from a cluster without their (heavy) checkpoints: the reports
    written at each stage end name the checkpoint they scored, and the comparison is the same."""
    stripped = []
    for path in seed_runs[:2]:
        copy = shutil.copytree(path, tmp_path / "runs" / path.name, ignore=shutil.ignore_patterns("checkpoints"))
        stripped.append(copy)
    compare_runs(seed_runs[:2], tmp_path / "full")
    compare_runs(stripped, tmp_path / "stripped")
    full, bare = (json.loads((tmp_path / d / "compare.json").read_text()) for d in ("full", "stripped"))
    assert [r["directions"] for r in bare["runs"]] == [r["directions"] for r in full["runs"]]
    assert [r["checkpoint"] for r in bare["runs"]] == [final_report(p)["stage"]["checkpoint"] for p in seed_runs[:2]]


def test_each_run_is_described_by_its_balancing_per_stage():
    assert method_of({"sampling": {"kind": "temperature", "params": {"temperature": 1.0}},
                      "distill": {"method": "lssd", "gate": "hard", "weight": 0.5}}) == \
        "temperature τ=1.0, lssd gate=hard w=0.5 when=stalled"
    assert method_of({"sampling": {"kind": "temperature", "params": {"temperature": 5.0}},
                      "surgery": {"method": "pcgrad"},
                      "stages": [{"name": "hrl", "sampling": {"kind": "proportional"}, "surgery": {"method": "none"}},
                                 {"name": "mix"}]}) == "hrl: proportional → mix: temperature τ=5.0, pcgrad"


def test_the_comparison_has_an_off_target_table_when_the_runs_were_scored_for_it():
    from pipeline.report.html import compare_markdown

    runs = [{"label": lab, "stage": "main", "method": "temperature", "checkpoint": "c", "seed": 1,
             "directions": {"deu-fra": {"bleu": b, "chrf": 20.0, "off_target": o}},
             "averages": {"zero-shot": {"bleu": b, "chrf": 20.0, "off_target": o, "directions": 1}}}
            for lab, b, o in (("t1", 1.5, 62.5), ("t5", 2.0, 12.25))]
    doc = {"split": "test", "metrics": ["bleu", "chrf", "off_target"], "directions": {"deu-fra": "zero-shot"},
           "signatures": {"bleu": "nrefs:1", "chrf": "nrefs:1", "off_target": "lingua:2.1.1|langs:deu,eng,fra"},
           "runs": runs, "pareto": None, "significance": None, "seed_groups": None}
    md = compare_markdown(doc)
    assert "## Off-target rate (%) per direction on test" in md
    assert "| t1 | main | 62.5 | 62.5 |" in md and "| t5 | main | 12.2 | 12.2 |" in md
    assert "off-tgt% `lingua:2.1.1|langs:deu,eng,fra`" in md
    doc["metrics"] = ["bleu", "chrf"]
    assert "Off-target" not in compare_markdown(doc)  # runs from before the metric: no such table
