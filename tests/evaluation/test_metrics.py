"""The metrics beside BLEU and chrF: chrF++ is chrF with word bigrams (word order 2), TER counts
edits per reference word, BLEU's tokenizer follows the target language, spBLEU only with its model."""

import pytest
from sacrebleu.metrics import BLEU, CHRF

from pipeline.evaluation import metrics
from pipeline.evaluation.metrics import ALWAYS, bleu_tokenizer, score_all


def test_chrfpp_ter_and_signatures():
    hyps, refs = ["the cat sat on the mat", "a b c"], ["the cat sat on a mat", "a b d"]
    got = score_all(hyps, refs, "eng", ALWAYS)
    # TER by hand: one substitution in each sentence, over 6 + 3 reference words
    assert got["ter"] == pytest.approx(round(100 * 2 / 9, 2))
    assert got["chrfpp"] == round(CHRF(word_order=2).corpus_score(hyps, [refs]).score, 2)
    assert got["chrfpp"] != got["chrf"] and got["bleu"] == round(BLEU().corpus_score(hyps, [refs]).score, 2)
    assert "nw:2" in got["chrfpp_signature"] and "nw:0" in got["chrf_signature"]
    assert got["ter_signature"].startswith("nrefs:1|case:lc|tok:tercom")
    assert "tok:13a" in got["bleu_signature"]


def test_bleu_tokenizer_by_target_language(capsys):
    assert bleu_tokenizer("deu") == "13a" and bleu_tokenizer(None) == "13a"
    # sacrebleu's zh tokenizer needs no package: Chinese BLEU is scored on characters
    for code in ("zho", "zh", "cmn_Hans"):
        assert bleu_tokenizer(code) == "zh"
    assert "tok:zh" in score_all(["猫坐在垫子上"], ["猫坐在垫子上"], "zho", ALWAYS)["bleu_signature"]
    mecab = metrics._tokenizer_works("ja-mecab")
    assert bleu_tokenizer("jpn") == ("ja-mecab" if mecab else "13a")
    if not mecab:
        assert "ja-mecab tokenizer is not installed" in capsys.readouterr().err


def test_spbleu_only_with_a_local_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(metrics, "spbleu_model_path", lambda: str(tmp_path / "flores200sacrebleuspm"))
    assert metrics.active_metrics() == ALWAYS
    assert "spBLEU skipped" in capsys.readouterr().err


def test_comet_without_its_package_says_so():
    try:
        import comet  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="unbabel-comet"):
            metrics.CometScorer("/nonexistent/model.ckpt")
    else:
        with pytest.raises(FileNotFoundError):
            metrics.CometScorer("/nonexistent/model.ckpt")
