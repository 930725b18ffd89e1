"""Off-target rate: a hand-made hypothesis file, counted by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.langid import OffTarget, candidates_from_signature, identifiable
from pipeline.evaluation.metrics import score_all
from pipeline.report.compare import paired_bootstrap

LANGS = ["eng", "deu", "fra", "bul", "mkd"]
REFS = ["Ich habe heute keine Zeit, weil ich arbeiten muss.", "Das Wetter ist schön und die Kinder spielen im Garten.",
        "Wir fahren morgen mit dem Zug nach Berlin.", "Kannst du mir bitte das Salz geben?",
        "Er hat das Buch gestern in der Bibliothek gelesen.", "123"]


def hypothesis_file(tmp_path):
    """German target: three German lines, one French, one English, one that is only digits."""
    hyps = ["Ich habe heute leider keine Zeit.", "Das Wetter ist heute sehr schön.",
            "Je n'ai pas le temps aujourd'hui parce que je dois travailler.", "Wir fahren morgen nach Berlin.",
            "He read the book in the library yesterday.", "123"]
    path = tmp_path / "eng-deu.hyp"
    path.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def test_the_off_target_rate_of_a_hand_made_hypothesis_file(tmp_path):
    hyps = hypothesis_file(tmp_path)
    metric = OffTarget("deu", LANGS)
    # 2 of 6 identified as another language (fra, eng); "123" cannot be placed: on target
    assert metric.detected(hyps) == ["deu", "deu", "fra", "deu", "eng", None]
    assert metric.corpus_score(hyps).score == pytest.approx(100 * 2 / 6)
    out = score_all(hyps, REFS, "deu", languages=LANGS)
    assert out["off_target"] == 33.33 and out["off_target_ref"] == 0.0
    assert out["off_target_signature"].startswith("lingua:") and candidates_from_signature(
        out["off_target_signature"]) == ["bul", "deu", "eng", "fra", "mkd"]


def test_related_languages_are_told_apart_among_the_runs_languages():
    # Bulgarian and Macedonian share a script; among the run's languages lingua tells them apart
    metric = OffTarget("mkd", LANGS)
    assert metric.detected(["Јас сум многу среќен што те гледам повторно.",
                            "Аз съм много щастлив, че те виждам отново."]) == ["mkd", "bul"]


def test_a_target_lingua_cannot_identify_has_no_rate_and_says_why():
    assert identifiable(["deu", "pig", "eng"]) == (["deu", "eng"], ["pig"])
    out = score_all(["x"], ["y"], "pig", languages=["eng", "pig"])
    assert "off_target" not in out and out["off_target_note"] == "lingua cannot identify pig"
    assert "off_target" not in score_all(["x"], ["y"], "deu")  # no run languages given: not scored


def test_the_paired_bootstrap_resamples_off_target_sentences_lower_is_better(tmp_path):
    hyps = hypothesis_file(tmp_path)
    base = ["Je ne sais pas."] * 6  # all French: 100% off target
    res = paired_bootstrap(base, [("sys", hyps)], REFS, samples=200, lang="deu", metric_keys=["off_target"],
                           languages=LANGS)["sys"]["off_target"]
    assert res["score"] == 33.33 and res["delta"] == pytest.approx(33.33 - 100, abs=0.01)
    assert res["ci"][1] < 0 and res["significant"]
    stats = OffTarget("deu", LANGS)._extract_corpus_statistics(hyps)
    assert np.array_equal(stats, np.array([[0, 1], [0, 1], [1, 1], [0, 1], [1, 1], [0, 1]], dtype=np.float32))
