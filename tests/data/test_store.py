import os

import numpy as np
import pytest

from pipeline.data import store
from pipeline.data.store import TokenSplit, load_split, save_split


def split(value: int) -> TokenSplit:
    a = np.full(3, value, dtype=np.int32)
    off = np.array([0, 1, 3], dtype=np.int64)
    return TokenSplit(src=a, src_off=off, tgt=a, tgt_off=off, lines=np.arange(2), meta={"v": value})


def test_a_concurrent_writer_that_wins_the_rename_is_kept(tmp_path, monkeypatch):
    """Two runs sharing a cache build the same entry: the loser's rename fails on the winner's
    non-empty directory; the loser must keep the winner's entry, not fail."""
    dest = tmp_path / "entry"
    real_replace = os.replace

    def other_process_first(src, dst):
        monkeypatch.setattr(store.os, "replace", real_replace)
        save_split(dest, split(1))  # the other process finishes between our check and rename
        real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", other_process_first)
    save_split(dest, split(2))
    got = load_split(dest)
    assert got is not None and got.meta == {"v": 1} and int(got.src[0]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]  # no temporary left behind


def test_a_rename_failure_without_a_winner_is_raised(tmp_path, monkeypatch):
    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.os, "replace", broken)
    with pytest.raises(OSError, match="No space"):
        save_split(tmp_path / "entry", split(1))
    assert list(tmp_path.iterdir()) == []
