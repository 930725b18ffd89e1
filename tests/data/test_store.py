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


def test_appended_chunks_make_the_same_entry_as_one_write_and_load_memory_mapped(tmp_path):
    rng = np.random.default_rng(0)
    lens = rng.integers(0, 9, size=(40, 2))
    src = [rng.integers(4, 99, n).astype(np.int32) for n in lens[:, 0]]
    tgt = [rng.integers(4, 99, n).astype(np.int32) for n in lens[:, 1]]
    with store.SplitWriter(tmp_path / "parts") as w:
        for a, b in ((0, 13), (13, 13), (13, 40)):  # an empty chunk in the middle
            w.append(np.concatenate(src[a:b] or [np.zeros(0, np.int32)]), lens[a:b, 0],
                     np.concatenate(tgt[a:b] or [np.zeros(0, np.int32)]), lens[a:b, 1], np.arange(a, b) + 1)
        w.commit(None, {"seen": 40})
    s_flat, s_off = store.ragged(src)
    t_flat, t_off = store.ragged(tgt)
    save_split(tmp_path / "whole", TokenSplit(s_flat, s_off, t_flat, t_off, np.arange(1, 41), meta={"seen": 40}))
    parts, whole = load_split(tmp_path / "parts"), load_split(tmp_path / "whole")
    assert parts is not None and whole is not None and isinstance(parts.src_off, np.memmap)
    for name in ("src", "src_off", "tgt", "tgt_off", "lines"):
        assert np.array_equal(getattr(parts, name), getattr(whole, name)), name
    sizes = np.maximum(lens[:, 0] + 2, lens[:, 1] + 1)
    assert parts.index == whole.index == {"format": 3, "pairs": 40, "size_max": int(sizes.max()),
                                          "size_sum": int(sizes.sum())}
    assert store.size_stats(parts) == (int(sizes.max()), sizes.sum() / 40)
    assert np.array_equal(store.pair_sizes(parts, np.array([3, 0, 39])), sizes[[3, 0, 39]])


def test_an_entry_of_the_previous_format_is_not_read(tmp_path):
    entry = tmp_path / "old"
    entry.mkdir()
    for name in ("src", "src_off", "tgt", "tgt_off", "lines"):
        np.save(entry / f"{name}.npy", np.zeros(2, dtype=np.int64))
    (entry / "meta.json").write_text("{}")
    assert load_split(entry) is None  # so the caller rebuilds it


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError), store.SplitWriter(tmp_path / "entry") as w:
        w.append(np.zeros(2, np.int32), np.array([2]), np.zeros(1, np.int32), np.array([1]), np.array([1]))
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
