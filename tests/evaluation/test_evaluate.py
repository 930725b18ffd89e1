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
