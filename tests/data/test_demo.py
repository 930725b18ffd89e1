"""The Wesnoth demo corpus, built from synthetic catalogues: nothing here touches the network or apt."""

from __future__ import annotations

import json
import random
import struct
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from pipeline.data import demo
from pipeline.data.demo import (
    DEMO_DIRECTIONS,
    HELD_ELSEWHERE,
    DemoUnavailable,
    assign_splits,
    build_demo_corpus,
    demo_root,
    eval_size,
)
from pipeline.data.demo_text import clean_pair, clean_segment
from pipeline.data.mo import read_mo, read_mo_raw


def write_mo(entries: list[tuple[bytes, bytes]], order: str = "<") -> bytes:
    """A minimal GNU .mo file (no hash table), entries sorted as msgfmt does."""
    entries = sorted(entries)
    n = len(entries)
    originals, translations = 28, 28 + 8 * n
    data_start = 28 + 16 * n
    blob, tables = b"", [b"", b""]
    for key, value in entries:
        for side, text in enumerate((key, value)):
            tables[side] += struct.pack(order + "2I", len(text), data_start + len(blob))
            blob += text + b"\x00"
    header = struct.pack(order + "7I", 0x950412DE, 0, n, originals, translations, 0, 0)
    return header + tables[0] + tables[1] + blob


ENTRIES = [
    (b"", b"Content-Type: text/plain; charset=UTF-8\n"),
    (b"Hello", b"Hallo"),
    (b"menu\x04Open", b"\xc3\x96ffnen"),
    (b"only-context\x04", b"x"),
    (b"apple\x00apples", b"Apfel\x00\xc3\x84pfel"),
    (b"Konrad", b"Konrad"),
    (b"Untranslated", b""),
]


@pytest.mark.parametrize("order", ["<", ">"])
def test_read_mo_both_byte_orders(tmp_path: Path, order: str) -> None:
    path = tmp_path / "x.mo"
    path.write_bytes(write_mo(ENTRIES, order))
    assert sorted(read_mo_raw(path)) == sorted(ENTRIES)
    assert sorted(read_mo(path)) == [(b"Hello", b"Hallo"), (b"Open", "Öffnen".encode())]
    assert sorted(read_mo(path.read_bytes())) == sorted(read_mo(str(path)))


def test_read_mo_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        read_mo(b"not a catalogue at all, really")
    with pytest.raises(ValueError):
        read_mo(write_mo([(b"a", b"b")])[:30])


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("<span color='green'>Victory</span> is near", "Victory is near"),
        ("<b>Recall Cost</b>\n", "Recall Cost"),
        ("The <ref>dst='..race_orc' text='Orcs'</ref> attack!", "The Orcs attack!"),
        ("<header>text=Damage</header>", "Damage"),
        ("<img>src='a.png~O(0.5)' align=here</img>", None),  # ~ inside the image path: dropped
        ("<img>src='units/elf.png' align=left</img>The elves", "The elves"),
        ("Teams 1 &amp; 4 vs. 2 &amp; 3", "Teams 1 & 4 vs. 2 & 3"),
        ("a &lt;b&gt; c", "a <b> c"),
        ("  lots \t of\u00a0 space  ", "lots of space"),
        ("female^Elvish Shyde", "Elvish Shyde"),
        ("race+plural^Orcs", "Orcs"),
        ("We will miss $unit.name|!", None),
        ("Level ${level}", None),
        ("%d gold", None),
        ("%Y-%m-%d", None),
        ("main={prefix}{suffix}", None),
        ("@Green line", None),
        ("lead ~allied~ units", None),
        ("&units/elf.png=Elves", None),
        ("<side> <nickname>", None),
        ("Les text='routes'</route> sont", None),
        ("20% more damage", "20% more damage"),
        ("...", None),
        ("12 / 34", None),
        (" ".join(["word"] * 40), " ".join(["word"] * 40)),
        (" ".join(["word"] * 41), None),
        ("first line\n\nsecond line", "first line second line"),
    ],
)
def test_clean_segment(raw: str, clean: str | None) -> None:
    assert clean_segment(raw) == clean


def test_clean_pair_splits_aligned_lines_and_joins_or_drops_the_rest() -> None:
    assert clean_pair("One.\n\nTwo.", "Eins.\nZwei.") == ([("One.", "Eins."), ("Two.", "Zwei.")], None)
    assert clean_pair("One.\nTwo.", "Eins und zwei.") == ([("One. Two.", "Eins und zwei.")], None)
    long = "\n".join(["five words in a line"] * 9)
    assert clean_pair(long, "zu kurz") == ([], "multiline_mismatch")
    assert clean_pair("Hi $name", "Hallo $name") == ([], "placeholder")
    assert clean_pair("Hello", "<b>Hallo</b>") == ([("Hello", "Hallo")], None)


def test_eval_size_rule() -> None:
    assert eval_size(16_000) == 400
    assert eval_size(4_000) == 400
    assert eval_size(2_000) == 200
    assert eval_size(300) == 50
    assert eval_size(90) == 30  # a third at most, so tiny directions still train


def _overlapping_sets() -> dict[str, list[str]]:
    universe = [f"sentence {i} of the shared English side" for i in range(6000)]
    rng = random.Random(3)
    return {
        "deu": universe[:5000],
        "rus": universe[500:6000],
        "kor": rng.sample(universe, 1500),
        "heb": rng.sample(universe, 700),
        "afr": rng.sample(universe[:3000], 400),
    }


def test_assign_splits_is_deterministic_consistent_and_sized() -> None:
    sets = _overlapping_sets()
    splits = assign_splits(sets)
    shuffled = {k: random.Random(9).sample(v, len(v)) for k, v in reversed(sets.items())}
    assert assign_splits(shuffled) == splits  # neither input order nor direction order matters

    where: dict[str, set[str]] = defaultdict(set)
    for name, mine in splits.items():
        assert set(mine) == set(sets[name])
        for sentence, split in mine.items():
            where[sentence].add(split)
    for sentence, found in where.items():
        assert len(found - {HELD_ELSEWHERE}) == 1, sentence  # one split everywhere: no leakage
        if HELD_ELSEWHERE in found:
            assert found & {"dev", "test"}, sentence  # only ever held out because it is evaluated elsewhere

    for name, mine in splits.items():
        counts = {s: sum(v == s for v in mine.values()) for s in ("dev", "test")}
        assert counts == {"dev": eval_size(len(sets[name])), "test": eval_size(len(sets[name]))}, name


def _fake_catalogues(root: Path) -> None:
    """Every demo locale gets two catalogues: shared English, language-tagged translations, plus noise."""
    for index, d in enumerate(DEMO_DIRECTIONS):
        size = 300 + 150 * index  # imbalanced, and large enough for the 50-pair dev/test floor
        entries = [
            (f"The knight of house {n} rides north".encode(), f"[{d.tgt}] knight {n} rides north".encode())
            for n in range(size)
        ]
        entries += [
            (b"", b"Project-Id-Version: fake\n"),
            (b"arrow\x00arrows", b"a\x00b"),
            (b"Hello $name", f"[{d.tgt}] hi $name".encode()),
            (b"<b>Bold</b> move", f"<b>[{d.tgt}]</b> move".encode()),
            (b"Line one.\nLine two.", f"[{d.tgt}] one.\n[{d.tgt}] two.".encode()),
            (" ".join(["far"] * 50).encode(), b"zu lang"),
            (b"female^Thief", f"[{d.tgt}] thief".encode()),
            (b"Konrad", b"Konrad"),
            (b"123", b"456"),
        ]
        folder = root / d.locale / "LC_MESSAGES"
        folder.mkdir(parents=True)
        late = entries[: size // 2] + entries[size:] + [(b"Thief", b"dup")]  # "a-core" sorts first and wins
        (folder / "b-campaign.mo").write_bytes(write_mo(late, ">"))
        (folder / "a-core.mo").write_bytes(write_mo(entries[size // 2 :]))


def _fake_source(work: Path, log: demo.Log) -> tuple[Path, dict[str, str]]:
    _fake_catalogues(work / "locale")
    log("fake: catalogues written")
    return work / "locale", {"wesnoth-fake": "1.0"}


def test_build_from_fake_catalogues(tmp_path: Path) -> None:
    lines: list[str] = []
    manifest_path = build_demo_corpus(tmp_path, lines.append, source=_fake_source)
    root = demo_root(tmp_path)
    assert manifest_path == root / "manifest.yaml"
    assert (root / demo.MARKER).exists()
    assert [p.name for p in root.parent.iterdir()] == [root.name]  # no partial build left beside it
    assert not (root / "_work").exists()
    assert any("eng-afr" in line for line in lines)

    manifest = yaml.safe_load(manifest_path.read_text(encoding="utf-8"))
    assert manifest["name"] == "wesnoth-1.16"
    assert [(m["src"], m["tgt"], m["group"]) for m in manifest["directions"]] == [
        (d.src, d.tgt, d.group) for d in DEMO_DIRECTIONS
    ]
    summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
    assert summary["packages"] == {"wesnoth-fake": "1.0"}

    eval_english: dict[str, set[str]] = defaultdict(set)
    train_english: set[str] = set()
    for entry in manifest["directions"]:
        tgt, counts = entry["tgt"], summary["directions"][f"eng-{entry['tgt']}"]
        for split in ("train", "dev", "test"):
            src_text = (root / entry[split]["src"]).read_bytes().decode("utf-8")
            tgt_text = (root / entry[split]["tgt"]).read_bytes().decode("utf-8")
            assert "\r" not in src_text + tgt_text
            src_lines, tgt_lines = src_text.splitlines(), tgt_text.splitlines()
            assert len(src_lines) == len(tgt_lines) == counts[split]
            assert src_text.count("\n") == len(src_lines)
            assert all(line.strip() and "<" not in line and "$" not in line for line in src_lines + tgt_lines)
            assert all(t.startswith(f"[{tgt}]") for t in tgt_lines)  # aligned, and the first translation won
            (train_english.update if split == "train" else eval_english[split].update)(src_lines)
        assert counts["dev"] == counts["test"] >= 50

        stats = summary["languages"][tgt]
        assert stats["entries"] == sum(stats["entry_drops"].values()) + stats["entries_used"]
        assert stats["segments"] == sum(stats["segment_drops"].values()) + stats["kept"]
        assert stats["kept"] == counts["train"] + counts["dev"] + counts["test"]
        for reason in ("header", "plural", "placeholder", "untranslated"):
            assert stats["entry_drops"][reason] >= 1, reason
        for reason in ("too_long", "duplicate", "no_letter"):
            assert stats["segment_drops"][reason] >= 1, reason
    assert not train_english & (eval_english["dev"] | eval_english["test"])
    assert not eval_english["dev"] & eval_english["test"]
    assert "Line one." in train_english | eval_english["dev"] | eval_english["test"]


def test_build_is_done_once(tmp_path: Path) -> None:
    build_demo_corpus(tmp_path, lambda _: None, source=_fake_source)

    def no_second_build(work: Path, log: demo.Log) -> tuple[Path, dict[str, str]]:
        raise AssertionError("rebuilt a complete corpus")

    assert build_demo_corpus(tmp_path, lambda _: None, source=no_second_build).exists()


def test_failed_build_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    def broken(work: Path, log: demo.Log) -> tuple[Path, dict[str, str]]:
        work.mkdir(parents=True)
        raise demo._unavailable("mirror unreachable")

    with pytest.raises(DemoUnavailable, match="data.corpus=PATH/TO/manifest.yaml"):
        build_demo_corpus(tmp_path, lambda _: None, source=broken)
    assert not demo_root(tmp_path).exists()
    assert list(demo_root(tmp_path).parent.iterdir()) == []


def test_missing_apt_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipeline.data.demo.shutil.which", lambda _: None)
    with pytest.raises(DemoUnavailable, match="apt-get"):
        build_demo_corpus(tmp_path, lambda _: None)


@pytest.mark.parametrize("root_user", [True, False])
def test_empty_package_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root_user: bool) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        fresh = ["apt-get", "update", "-q"] in calls
        ok = cmd[1] == "update" or fresh
        err = "" if ok else "E: Unable to locate package wesnoth-1.16-data"
        return subprocess.CompletedProcess(cmd, 0 if ok else 100, "", err)

    monkeypatch.setattr("pipeline.data.demo.shutil.which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr("pipeline.data.demo.subprocess.run", fake_run)
    monkeypatch.setattr("pipeline.data.demo.os.geteuid", lambda: 0 if root_user else 1000)
    if root_user:
        demo._apt_download(tmp_path, lambda _: None)
        assert [c[1] for c in calls] == ["download", "update", "download"]
    else:
        with pytest.raises(DemoUnavailable, match="apt-get update"):
            demo._apt_download(tmp_path, lambda _: None)
        assert [c[1] for c in calls] == ["download"]
