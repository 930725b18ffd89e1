"""Run-directory logs read back after a kill, and what a refused resume names."""

import json

import pytest

from pipeline.checkpoint.resume import corpus_changes
from pipeline.rundir.layout import RunDir, RunDirError


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n" + json.dumps({"step": 2}) + "\n" + '{"step": 3, "lo')
    assert RunDir(tmp_path).read_jsonl(path) == [{"step": 1}, {"step": 2}]  # before: a JSONDecodeError
    assert f"{path}:3: torn last line skipped" in capsys.readouterr().err


def test_a_torn_line_elsewhere_names_file_and_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "ev\n{"step": 3}\n')
    with pytest.raises(RunDirError, match=rf"{path}:2: not a JSON record"):
        RunDir(tmp_path).read_jsonl(path)


def test_corpus_changes_name_the_direction_splits_and_files():
    saved = {"eng-fra train": {"fingerprint": "a", "files": "fr.src | fr.tgt"},
             "eng-fra dev": {"fingerprint": "b", "files": "d.src | d.tgt"},
             "eng-deu train": {"fingerprint": "c", "files": "de.src | de.tgt"}}
    now = {"eng-fra train": {"fingerprint": "A", "files": "fr.src | fr.tgt"},
           "eng-fra dev": {"fingerprint": "b", "files": "d.src | d.tgt"},
           "eng-kor train": {"fingerprint": "k", "files": "ko.src | ko.tgt"}}
    assert corpus_changes(saved, now) == ("eng-deu train is gone (was de.src | de.tgt); "
                                          "eng-fra train changed (fr.src | fr.tgt); eng-kor train is new (ko.src | ko.tgt)")
