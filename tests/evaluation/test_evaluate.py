"""Eval tables say what share of each test set they scored."""

from pipeline.evaluation.evaluate import format_table, partial_note


def test_a_partly_scored_set_is_stated_with_its_share():
    dirs = {"eng-twi": {"sentences": 106, "of": 1500, "bleu": 1.0, "chrf": 2.0, "loss": 3.0},
            "eng-fra": {"sentences": 400, "of": 400, "bleu": 1.0, "chrf": 2.0, "loss": 3.0}}
    assert partial_note(dirs) == "scored only part of the set (filters, eval.max_sentences): eng-twi 106 of 1500 (7.1%)"
    table = format_table({"split": "test", "directions": dirs, "averages": {}})
    assert table.endswith("eng-twi 106 of 1500 (7.1%)")
    whole = {"eng-fra": dirs["eng-fra"]}
    assert partial_note(whole) == "" and "scored only part" not in format_table({"split": "test", "directions": whole})


def test_eval_only_directions_have_their_own_average_and_stay_out_of_all():
    from pipeline.evaluation.evaluate import averages

    e = {"eng-deu": {"bleu": 30.0, "chrf": 50.0}, "eng-bos": {"bleu": 10.0, "chrf": 30.0},
         "deu-fra": {"bleu": 1.0, "chrf": 9.0}}
    groups = {"eng-deu": "hrl", "eng-bos": "lrl", "deu-fra": "zero-shot"}
    out = averages(e, groups, eval_only=["deu-fra"])
    assert out["all"] == {"bleu": 20.0, "chrf": 40.0, "directions": 2}
    assert out["zero-shot"] == {"bleu": 1.0, "chrf": 9.0, "directions": 1}
    assert averages(e, groups)["all"]["directions"] == 3  # a corpus without eval-only ones: as before
    table = format_table({"split": "test", "directions": {n: {**v, "loss": 1.0} for n, v in e.items()},
                          "averages": out}, groups)
    assert "  deu-fra     zero-shot      1.0     9.0" in table  # the group column fits its name
