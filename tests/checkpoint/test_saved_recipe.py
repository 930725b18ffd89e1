"""A checkpoint's saved recipe is read as this version reads recipes: a key added since, at its
default, is no recipe change on resume; a changed value still is."""

import copy

from pipeline.checkpoint.resume import diff_items, with_defaults
from pipeline.core.typed_yaml import to_plain
from pipeline.curriculum.recipe import load_recipe

from corpus_factory import tiny_recipe, write_corpus


def test_a_key_added_since_the_checkpoint_is_no_change(tmp_path):
    now = to_plain(load_recipe(tiny_recipe(tmp_path, write_corpus(tmp_path))))
    older = copy.deepcopy(now)
    del older["model"]["activation_checkpointing"]  # a checkpoint written before the key existed
    assert diff_items(older, now) == [("model.activation_checkpointing", None, False)]
    assert diff_items(with_defaults(older), now) == []
    older["train"]["lr"] = now["train"]["lr"] * 2
    assert diff_items(with_defaults(older), now) == [("train.lr", now["train"]["lr"] * 2, now["train"]["lr"])]
    assert with_defaults({"no": "recipe"}) == {"no": "recipe"}  # unreadable: compared as saved
