"""Opening a cached corpus reads no text while its files' stat is unchanged, and notices changes."""

import os

import numpy as np
import pytest

from pipeline.config import DataConfig, TokenizerConfig
from pipeline.data import prepare

from corpus_factory import write_corpus

TOK = TokenizerConfig(vocab_size=300)


def age(root, seconds=60):
    """Make every file under root `seconds` old (fresh files are hashed again: see RACY_S)."""
    t = os.stat(root).st_mtime - seconds
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (t, t))


@pytest.fixture
def corpus(tmp_path):
    m = write_corpus(tmp_path / "data", sizes={"rev": 120, "pig": 40}, dev=10, test=10)
    age(tmp_path / "data")
    return m, DataConfig(corpus=str(m), cache_dir=str(tmp_path / "cache"))


def open_(cfg, m, logs=None):
    return prepare.prepare_corpus(cfg, TOK, log=(logs.append if logs is not None else lambda _m: None), manifest_path=m)


def reads(monkeypatch):
    calls = []
    real = prepare.open_splits

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(prepare, "open_splits", counting)
    return calls


def test_a_cached_corpus_opens_without_reading_text_and_is_the_same(corpus, monkeypatch):
    m, cfg = corpus
    cold = open_(cfg, m)
    calls, logs = reads(monkeypatch), []
    warm = open_(cfg, m, logs)
    assert calls == []
    assert any("opened from the cache" in line for line in logs)
    assert warm.fingerprint == cold.fingerprint and warm.parts == cold.parts and warm.summary == cold.summary
    assert warm.tokenizer.path == cold.tokenizer.path
    for split in prepare.SPLITS:
        for name, ts in cold.splits[split].items():
            other = warm.splits[split][name]
            assert np.array_equal(ts.src, other.src) and np.array_equal(ts.tgt_off, other.tgt_off)
            assert ts.texts == other.texts


def test_a_changed_file_is_read_again_and_changes_the_fingerprint(corpus, monkeypatch):
    m, cfg = corpus
    cold = open_(cfg, m)
    calls = reads(monkeypatch)
    src = m.parent / "eng-rev" / "train.eng"
    lines = src.read_text().splitlines()
    src.write_text("\n".join(["changed", *lines[1:]]) + "\n")
    age(m.parent, 90)
    again = open_(cfg, m)
    assert calls == [1] and again.fingerprint != cold.fingerprint
    assert again.parts["eng-rev train"] != cold.parts["eng-rev train"]
    assert again.parts["eng-pig train"] == cold.parts["eng-pig train"]


def test_a_touched_file_is_hashed_again_with_the_same_result(corpus, monkeypatch):
    m, cfg = corpus
    cold = open_(cfg, m)
    calls = reads(monkeypatch)
    os.utime(m.parent / "eng-pig" / "dev.eng")  # now: too recent to trust, so hashed
    assert open_(cfg, m).fingerprint == cold.fingerprint and calls == [1]
    age(m.parent, 120)  # old again, with another mtime: hashed once more, then remembered
    assert open_(cfg, m).fingerprint == cold.fingerprint and calls == [1, 1]
    assert open_(cfg, m).fingerprint == cold.fingerprint and calls == [1, 1]


def test_rehash_on_request(corpus, monkeypatch):
    m, cfg = corpus
    open_(cfg, m)
    calls = reads(monkeypatch)
    monkeypatch.setenv("MMTC_REHASH", "1")
    open_(cfg, m)
    assert calls == [1]


def test_a_recorded_corpus_opens_by_its_keys_without_stat_or_text_and_falls_back_without_them(corpus, tmp_path,
                                                                                           monkeypatch):
    from pipeline.config import RecipeConfig

    m, cfg = corpus
    cold = open_(cfg, m)
    record = tmp_path / "run" / "corpus.json"
    record.parent.mkdir()
    prepare.record_corpus(cold, record)
    recipe = RecipeConfig(data=cfg, tokenizer=TOK)
    recipe.data.corpus = str(m)

    def boom(*a, **k):
        raise AssertionError("looked at the files")

    calls = reads(monkeypatch)
    monkeypatch.setattr(prepare, "stat_key", boom)
    logs: list[str] = []
    warm = prepare.open_recorded(recipe, cold.tokenizer.path, record, logs.append)
    assert calls == [] and any(f"by the keys in {record}" in line for line in logs)
    assert warm.fingerprint == cold.fingerprint and warm.summary == cold.summary
    assert np.array_equal(warm.splits["train"]["eng-rev"].src, cold.splits["train"]["eng-rev"].src)
    monkeypatch.undo()
    calls = reads(monkeypatch)
    record.write_text("{}")  # a run from before records: the files are checked as before
    again = prepare.open_recorded(recipe, cold.tokenizer.path, record, lambda _m: None)
    assert again.fingerprint == cold.fingerprint and calls == []  # their stat is unchanged: still no text
    monkeypatch.setenv("MMTC_REHASH", "1")
    prepare.open_recorded(recipe, cold.tokenizer.path, record, lambda _m: None)
    assert calls == [1]
