"""The streaming path for training splits against the in-memory one, and its errors at scale."""

import json

import numpy as np
import pytest
import yaml

from pipeline.config import DataConfig, TokenizerConfig
from pipeline.data import chunks, prepare
from pipeline.data.corpus import DataError, read_split
from pipeline.data.manifest import SourceSpec
from pipeline.data.sample import plan
from pipeline.data.tokenizer import Tokenizer, train_tokenizer

TOK = TokenizerConfig(vocab_size=300)


def manifest(tmp_path, directions):
    """directions: name -> {"train": (src bytes, tgt bytes), ...}; dev and test default to one pair."""
    spec = {"directions": []}
    for name, splits in directions.items():
        src, tgt = name.split("-")
        entry = {"src": src, "tgt": tgt}
        for split in ("train", "dev"):
            s, t = splits.get(split, (b"hello\n", b"HELLO\n"))
            (tmp_path / f"{name}.{split}.src").write_bytes(s)
            (tmp_path / f"{name}.{split}.tgt").write_bytes(t)
            entry[split] = {"src": f"{name}.{split}.src", "tgt": f"{name}.{split}.tgt"}
        spec["directions"].append(entry)
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_an_invalid_byte_deep_in_a_large_file_and_a_count_mismatch_are_reported_together(tmp_path):
    n = 3_000_000
    lines = bytearray(b"x\n" * n)
    lines[2 * 2_000_000 : 2 * 2_000_000 + 1] = b"\xff"  # line 2,000,001 (1-based) becomes "\xff"
    m = manifest(tmp_path, {"eng-deu": {"train": (bytes(lines), b"y\n" * n)},
                            "eng-fra": {"train": (b"a\nb\nc\n", b"a\nb\n")}})
    cfg = DataConfig(corpus=str(m), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError) as exc:
        prepare.prepare_corpus(cfg, TOK, log=lambda _m: None, manifest_path=m)
    assert exc.value.errors == [
        f"{tmp_path / 'eng-deu.train.src'}:2000001: invalid UTF-8 (byte 0xff at column 1)",
        f"eng-fra train: line counts differ: {tmp_path / 'eng-fra.train.src'} has 3 lines, "
        f"{tmp_path / 'eng-fra.train.tgt'} has 2 lines",
    ]


def _messy(n):
    """Lines with every kind of trouble the filters count, at places that straddle chunk edges."""
    src, tgt = [], []
    for i in range(n):
        s, t = f"sentence {i} here".encode(), f"SENTENCE {i} HERE".encode()
        if i % 11 == 3:
            s = b"   "  # empty after stripping
        if i % 13 == 5:
            t = b"bad \xc3 byte"
        if i % 17 == 7:
            s = b" ".join([b"long"] * 40)  # too_long at max_len 20
        if i % 19 == 2:
            t = b"a"  # bad ratio against a long source
            s = b" ".join([b"w"] * 15)
        src.append(s)
        tgt.append(t)
    return b"\xef\xbb\xbf" + b"\n".join(src) + b"\n", b"\n".join(tgt)  # a BOM; no final newline on one side


@pytest.mark.parametrize("chunk", [7, 50, 1000])
@pytest.mark.parametrize("workers", [1, 2])
def test_streamed_training_split_equals_the_whole_file_path(tmp_path, monkeypatch, chunk, workers):
    src, tgt = _messy(230)
    m = manifest(tmp_path, {"eng-upp": {"train": (src, tgt)}})
    tok = train_tokenizer({"eng": ["sentence here long w"], "upp": ["SENTENCE HERE A"]}, ["eng", "upp"], TOK,
                          tmp_path / "spm.model")
    cfg = DataConfig(corpus=str(m), cache_dir=str(tmp_path / f"cache{chunk}{workers}"), on_invalid="skip",
                     max_len=20, max_len_ratio=3.0)
    monkeypatch.setattr(chunks, "CHUNK", chunk)
    monkeypatch.setattr(prepare, "workers_here", lambda: workers)
    got = prepare.prepare_corpus(cfg, TOK, log=lambda _m: None, manifest_path=m, tokenizer_path=tok.path)
    ts = got.splits["train"]["eng-upp"]
    spec = SourceSpec(src=str(tmp_path / "eng-upp.train.src"), tgt=str(tmp_path / "eng-upp.train.tgt"))
    whole = prepare._tokenize(read_split(spec, "skip", "x"), Tokenizer(tok.path), cfg, "eng-upp", "train")
    for name in ("src", "src_off", "tgt", "tgt_off", "lines"):
        assert np.array_equal(np.asarray(getattr(ts, name)), np.asarray(getattr(whole, name))), name
    assert ts.meta == whole.meta
    # by hand from _messy: 21 blank sources less 2 overwritten (i=58, 135); 14 long less 1 overwritten (211)
    # and 1 with an invalid target (109); 12 bad ratios; 18 invalid targets less 1 overwritten (135)
    assert ts.meta["dropped"] == {"empty": 19, "too_long": 12, "bad_ratio": 12, "invalid_utf8": 17}
    assert got.parts["eng-upp train"]["fingerprint"] == read_split(spec, "skip", "x").fingerprint


def test_bad_records_in_a_chunked_tsv_are_named_by_file_and_line(tmp_path, monkeypatch):
    rows = [f"s{i}\tt{i}" for i in range(100)]
    rows[40], rows[77] = "no tab here", "{also none}"
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(chunks, "CHUNK", 16)
    source = chunks.open_source(SourceSpec(format="tsv", path=str(tmp_path / "train.tsv")), "error", "x")
    got = [chunks.read_chunk(source, k) for k in range(source.chunks)]
    problems = chunks.merge_problems([(c.problems, c.bad) for c in got], str(tmp_path / "train.tsv"))
    assert problems == [f"{tmp_path / 'train.tsv'}:41: has 1 tab-separated columns, needs column 1",
                        f"{tmp_path / 'train.tsv'}:78: has 1 tab-separated columns, needs column 1"]
    assert sum(len(c.src) for c in got) == 100 and got[2].first == 32


def test_above_max_sentences_the_tokenizer_sample_is_a_bounded_temperature_draw(tmp_path):
    big = b"".join(f"big line {i}\n".encode() for i in range(3000))
    small = b"".join(f"small {i}\n".encode() for i in range(100))
    m = manifest(tmp_path, {"eng-deu": {"train": (big, big.upper())}, "eng-fra": {"train": (small, small.upper())}})
    cfg = TokenizerConfig(vocab_size=300, max_sentences=2000, temperature=2.0, seed=4)
    from pipeline.data.manifest import load_manifest

    man = load_manifest(m)
    sources, _ = prepare.open_splits(man, "error")
    wanted = plan(man, sources, cfg)
    assert wanted is not None
    # the rule: language l's share is D_l^(1/τ) / Σ D^(1/τ), D_l its lines over the sides it is on:
    # eng 3100, deu 3000, fra 100 -> sqrt: 55.68, 54.77, 10.0 -> p = 0.4634, 0.4558, 0.0832
    eng = len(wanted[("eng-deu", "src")]) + len(wanted[("eng-fra", "src")])
    deu, fra = len(wanted[("eng-deu", "tgt")]), len(wanted[("eng-fra", "tgt")])
    assert eng + deu + fra == 2000
    for got, p in ((eng, 0.4634), (deu, 0.4558), (fra, 0.0832)):
        assert abs(got / 2000 - p) < 0.035, (got, p)
    assert fra > 100  # fra has 100 lines: drawn with replacement to reach its share
    assert len(np.unique(wanted[("eng-deu", "tgt")])) == deu  # positions are distinct within the lines
    assert np.array_equal(plan(man, sources, cfg)[("eng-deu", "src")], wanted[("eng-deu", "src")])
    assert plan(man, sources, TokenizerConfig(max_sentences=2 * 3100)) is None  # everything fits: keep all
    data = DataConfig(corpus=str(m), cache_dir=str(tmp_path / "cache"))
    logs: list[str] = []
    corpus = prepare.prepare_corpus(data, cfg, log=logs.append, manifest_path=m)
    used = json.loads(corpus.tokenizer.path.with_name("sample.json").read_text())
    assert used == {"distinct": False, "sentences": {"deu": deu, "eng": eng, "fra": fra}}
    assert any("a sample of 2000 sentences" in line and f"fra {fra}" in line for line in logs)


def test_a_datasets_split_streams_in_row_chunks_with_nested_fields(tmp_path, monkeypatch):
    import datasets

    rows = [{"en": f"  sentence {i} ", "de": f"Satz {i}"} for i in range(23)]
    rows[4]["de"] = None  # read as "": dropped as empty
    datasets.Dataset.from_dict({"translation": rows}).save_to_disk(str(tmp_path / "disk"))
    spec = SourceSpec(format="disk", path=str(tmp_path / "disk"), src_field="translation.en",
                      tgt_field="translation.de")
    monkeypatch.setattr(chunks, "CHUNK", 5)
    source = chunks.open_source(spec, "error", "eng-deu train")
    whole = read_split(spec, "error", "x")
    assert source.fingerprint == whole.fingerprint and source.chunks == 5
    got = [chunks.read_chunk(source, k) for k in range(source.chunks)]
    assert [s.strip() for c in got for s in c.src] == whole.src
    assert [t for c in got for t in c.tgt][4] == "" and got[4].first == 20
    bad = SourceSpec(format="disk", path=str(tmp_path / "disk"), src_field="translation.xx", tgt_field="translation.de")
    with pytest.raises(DataError, match=r"row 1: field 'translation.xx' not found"):
        chunks.open_source(bad, "error", "eng-deu train")


def test_a_reverse_read_from_the_same_files_adds_nothing_to_the_tokenizer_sample(tmp_path):
    big = b"".join(f"big line {i}\n".encode() for i in range(3000))
    small = b"".join(f"small {i}\n".encode() for i in range(100))
    m = manifest(tmp_path, {"eng-deu": {"train": (big, big.upper())}, "eng-fra": {"train": (small, small.upper())}})
    from pipeline.data.manifest import load_manifest

    one_way = load_manifest(m)
    cfg = TokenizerConfig(vocab_size=300, max_sentences=2000, temperature=2.0, seed=4)
    spec = yaml.safe_load(m.read_text())
    fwd = one_way.spec("eng-deu")
    spec["directions"].append({"src": "deu", "tgt": "eng", "train": {"src": fwd.train.tgt, "tgt": fwd.train.src},
                               "dev": {"src": fwd.dev.tgt, "tgt": fwd.dev.src}})
    m.write_text(yaml.safe_dump(spec))
    both = load_manifest(m)
    assert both.names == ["eng-deu", "eng-fra", "deu-eng"]
    sources, _ = prepare.open_splits(both, "error")
    wanted = plan(both, sources, cfg)
    # deu-eng mirrors eng-deu's files: it draws nothing, and the others draw exactly what they
    # drew without it (the same language sizes, so the same multinomial and positions)
    assert len(wanted[("deu-eng", "src")]) == len(wanted[("deu-eng", "tgt")]) == 0
    alone = plan(one_way, prepare.open_splits(one_way, "error")[0], cfg)
    for key, pos in alone.items():
        assert np.array_equal(wanted[key], pos)
