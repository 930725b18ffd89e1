import json
from pathlib import Path

import pytest

from pipeline.config import DataConfig, TokenizerConfig
from pipeline.core.typed_yaml import ConfigError
from pipeline.data.corpus import DataError, read_split
from pipeline.data.manifest import SourceSpec, load_manifest
from pipeline.data.prepare import prepare_corpus


def text_spec(tmp_path: Path, src: bytes, tgt: bytes) -> SourceSpec:
    (tmp_path / "a.src").write_bytes(src)
    (tmp_path / "a.tgt").write_bytes(tgt)
    return SourceSpec(format="text", src=str(tmp_path / "a.src"), tgt=str(tmp_path / "a.tgt"))


def test_line_count_mismatch_names_both_files_and_counts(tmp_path):
    spec = text_spec(tmp_path, b"a\nb\nc\n", b"x\ny\n")
    with pytest.raises(DataError) as exc:
        read_split(spec, "error", "eng-fra train")
    msg = str(exc.value)
    assert f"{tmp_path / 'a.src'} has 3 lines" in msg and f"{tmp_path / 'a.tgt'} has 2 lines" in msg
    assert "eng-fra train" in msg


def test_invalid_utf8_is_an_error_with_file_and_line(tmp_path):
    spec = text_spec(tmp_path, b"ok\nbad \xff here\nfine\n", b"a\nb\nc\n")
    with pytest.raises(DataError, match=rf"{tmp_path / 'a.src'}:2: invalid UTF-8 \(byte 0xff at column 5\)"):
        read_split(spec, "error", "x")


def test_invalid_utf8_skip_drops_the_pair_and_counts_it(tmp_path):
    spec = text_spec(tmp_path, b"ok\nbad \xff\nfine\n", b"a\nb\nc\xc3\n")
    rs = read_split(spec, "skip", "x")
    assert rs.src == ["ok"] and rs.tgt == ["a"]
    assert rs.dropped["invalid_utf8"] == 2
    assert rs.lines == [1]


def test_only_newline_splits_lines(tmp_path):
    weird = "one\rstill one\u2028and\u0085one\n".encode()
    spec = text_spec(tmp_path, weird + b"two\n", b"x\ny")  # no trailing newline on the target
    rs = read_split(spec, "error", "x")
    assert len(rs.src) == 2 and rs.src[0].startswith("one\rstill one\u2028and\u0085one")


def test_tsv_and_jsonl(tmp_path):
    (tmp_path / "p.tsv").write_text("hello\tbonjour\nbye\tsalut\n")
    rs = read_split(SourceSpec(format="tsv", path=str(tmp_path / "p.tsv")), "error", "x")
    assert rs.src == ["hello", "bye"] and rs.tgt == ["bonjour", "salut"]
    (tmp_path / "p.jsonl").write_text('{"translation": {"en": "hi", "fr": "salut"}}\n{"translation": {"en": "x"}}\n')
    spec = SourceSpec(format="jsonl", path=str(tmp_path / "p.jsonl"), src_field="translation.en",
                      tgt_field="translation.fr")
    with pytest.raises(DataError, match=r"p.jsonl:2: field 'translation.fr' not found"):
        read_split(spec, "error", "x")
    (tmp_path / "bad.tsv").write_text("only-one-column\n")
    with pytest.raises(DataError, match=r"bad.tsv:1: has 1 tab-separated columns"):
        read_split(SourceSpec(format="tsv", path=str(tmp_path / "bad.tsv")), "error", "x")


def test_datasets_formats(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"en": ["a b", "c"], "fr": ["x y", "z"]})
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "disk"))
    rs = read_split(SourceSpec(format="datasets", builder="parquet", path=str(tmp_path / "d.parquet"),
                               src_field="en", tgt_field="fr"), "error", "x")
    assert rs.src == ["a b", "c"] and rs.tgt == ["x y", "z"]
    rs2 = read_split(SourceSpec(format="disk", path=str(tmp_path / "disk"), src_field="en", tgt_field="fr"),
                     "error", "x")
    assert rs2.tgt == ["x y", "z"] and rs2.fingerprint == rs.fingerprint.replace(rs.fingerprint, rs2.fingerprint)


def test_manifest_unknown_keys_listed_with_paths(tmp_path):
    m = tmp_path / "m.yaml"
    m.write_text("directions:\n  - src: eng\n    tgt: fra\n    colour: red\n    train: {src: a, tgt: b, foo: 1}\n"
                 "    dev: {format: jsonl, path: d}\n")
    with pytest.raises(ConfigError) as exc:
        load_manifest(m)
    text = "\n".join(exc.value.errors)
    assert f"{m}:4: directions[0].colour: unknown key 'colour'; valid keys here: dev, eval_only, group, src, test, tgt, train" \
        in text
    assert "directions[0].train.foo: unknown key" in text
    assert "directions[0].dev.src_field: required for format 'jsonl'" in text


def _corpus(tmp_path: Path, train_src: list[str], train_tgt: list[str], dev: tuple[list[str], list[str]]) -> Path:
    d = tmp_path / "c"
    d.mkdir(exist_ok=True)
    rows = {"train": (train_src, train_tgt), "dev": dev}
    for split, (s, t) in rows.items():
        (d / f"{split}.eng").write_text("".join(x + "\n" for x in s))
        (d / f"{split}.fra").write_text("".join(x + "\n" for x in t))
    m = tmp_path / "m.yaml"
    m.write_text("directions:\n  - {src: eng, tgt: fra, train: {src: c/train.eng, tgt: c/train.fra},"
                 " dev: {src: c/dev.eng, tgt: c/dev.fra}}\n")
    return m


def test_train_drops_are_counted_by_reason_and_dev_drops_are_errors(tmp_path):
    long = " ".join(["word"] * 60)
    src = ["a cat", "", "the dog", long, "word " * 10, "tiny"] + [f"line {i} of text" for i in range(40)]
    tgt = ["un chat", "vide", "", "court", "x", "petit"] + [f"ligne {i} de texte" for i in range(40)]
    m = _corpus(tmp_path, src, tgt, (["hello", "ok"], ["bonjour", ""]))
    cfg = DataConfig(corpus=str(m), max_len=20, max_len_ratio=4.0, cache_dir=str(tmp_path / "cache"))
    tok = TokenizerConfig(vocab_size=300)
    with pytest.raises(DataError, match=r"eng-fra dev .*1 pairs would be dropped: empty: 1 \(lines 2\)"):
        prepare_corpus(cfg, tok, log=lambda m: None, manifest_path=m)
    cfg.allow_eval_drops = True
    corpus = prepare_corpus(cfg, tok, log=lambda m: None, manifest_path=m)
    entry = corpus.summary["directions"]["eng-fra"]
    assert entry["train"]["dropped"] == {"empty": 2, "too_long": 1, "bad_ratio": 1}
    assert entry["train"]["pairs"] == len(src) - 4 == entry["train"]["seen"] - 4
    assert entry["dev"]["pairs"] == 1


def test_direction_empty_after_filtering_is_an_error(tmp_path):
    m = _corpus(tmp_path, ["", "a"], ["b", ""], (["hello"], ["bonjour"]))
    cfg = DataConfig(corpus=str(m), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match="eng-fra train .* no pairs left after filtering"):
        prepare_corpus(cfg, TokenizerConfig(vocab_size=280), log=lambda m: None, manifest_path=m)


def test_second_prepare_hits_the_cache(tmp_path, monkeypatch):
    src = [f"sentence number {i}" for i in range(50)]
    m = _corpus(tmp_path, src, [s.upper() for s in src], (["hello"], ["HELLO"]))
    cfg = DataConfig(corpus=str(m), cache_dir=str(tmp_path / "cache"))
    tok = TokenizerConfig(vocab_size=300)
    first = prepare_corpus(cfg, tok, log=lambda m: None, manifest_path=m)

    from pipeline.data import prepare
    from pipeline.data import tokenizer as tk

    def boom(*a, **k):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(tk.Tokenizer, "encode", boom)
    for name in ("encode_pairs", "encode_train", "train_tokenizer", "train_on", "sample_pass"):
        monkeypatch.setattr(prepare, name, boom)
    second = prepare_corpus(cfg, tok, log=lambda m: None, manifest_path=m)
    assert second.fingerprint == first.fingerprint
    a, b = first.splits["train"]["eng-fra"], second.splits["train"]["eng-fra"]
    assert list(a.src) == list(b.src) and list(a.tgt_off) == list(b.tgt_off)
    assert json.loads(json.dumps(second.summary)) == first.summary


def test_nul_bytes_make_a_line_invalid_and_a_bom_is_stripped_and_counted(tmp_path):
    spec = text_spec(tmp_path, b"\xef\xbb\xbfHello\nnul \x00 here\nfine\n", b"Bonjour\nb\nc\n")
    with pytest.raises(DataError, match=rf"{tmp_path / 'a.src'}:2: NUL byte at column 5"):
        read_split(spec, "error", "x")  # before: kept silently
    rs = read_split(spec, "skip", "x")
    assert rs.src == ["Hello", "fine"] and rs.dropped["invalid_utf8"] == 1  # before: "\ufeffHello"
    assert rs.stripped == {"bom": 1}


@pytest.mark.parametrize("case", ["invalid_utf8_train", "invalid_utf8_dev", "empty_train", "blank_side"])
def test_data_check_refuses_what_run_refuses_with_the_same_messages(tmp_path, case):
    from pipeline.launch.data_check import check_manifest

    src = [f"line {i} of text" for i in range(20)]
    tgt = [f"ligne {i} de texte" for i in range(20)]
    m = _corpus(tmp_path, src, tgt, (["hello", "ok"], ["bonjour", "oui"]))
    train, dev = tmp_path / "c" / "train.fra", tmp_path / "c" / "dev.eng"
    if case == "invalid_utf8_train":
        train.write_bytes(train.read_bytes().replace(b"ligne 3", b"ligne \xff3"))
    elif case == "invalid_utf8_dev":
        dev.write_bytes(b"hello\n\xc3\n")
    elif case == "empty_train":
        train.write_bytes(b"")
        (tmp_path / "c" / "train.eng").write_bytes(b"")
    else:
        train.write_bytes(b"\n" * 20)
    cfg = DataConfig(corpus=str(m), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError) as run_error:
        prepare_corpus(cfg, TokenizerConfig(vocab_size=280), log=lambda m: None, manifest_path=m)
    with pytest.raises(DataError) as check_error:  # before: "ok" for every case
        check_manifest(str(m))
    assert check_error.value.errors == run_error.value.errors


def test_evaluation_sets_are_scored_whole_unless_filter_eval(tmp_path):
    src = [f"line {i} of text" for i in range(40)]
    tgt = [f"ligne {i} de texte" for i in range(40)]
    long = " ".join(["word"] * 60)
    m = _corpus(tmp_path, src, tgt, (["hello", long], ["bonjour", long]))
    cfg = DataConfig(corpus=str(m), max_len=20, cache_dir=str(tmp_path / "cache"))
    corpus = prepare_corpus(cfg, TokenizerConfig(vocab_size=300), log=lambda m: None, manifest_path=m)
    assert corpus.summary["directions"]["eng-fra"]["dev"]["pairs"] == 2  # max_len filters train only
    cfg.filter_eval = True
    with pytest.raises(DataError, match=r"eng-fra dev .*too_long: 1 \(lines 2\)"):
        prepare_corpus(cfg, TokenizerConfig(vocab_size=300), log=lambda m: None, manifest_path=m)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64])
def test_reading_in_chunks_changes_nothing(tmp_path, monkeypatch, chunk):
    from pipeline.data import corpus

    src = b"\xef\xbb\xbfcaf\xc3\xa9\nbad \xff\n\nnul \x00\nline\rwith cr\n\xe2\x80\xa8sep\nlast no newline"
    tgt = b"a\nb\nc\nd\ne\nf\ng\n"
    spec = text_spec(tmp_path, src, tgt)
    whole = read_split(spec, "skip", "x")
    with pytest.raises(DataError) as exc:
        read_split(spec, "error", "x")
    whole_errors = exc.value.errors
    monkeypatch.setattr(corpus, "READ_CHUNK", chunk)
    part = read_split(spec, "skip", "x")
    assert (part.src, part.tgt, part.lines, part.dropped, part.fingerprint, part.stripped) == (
        whole.src, whole.tgt, whole.lines, whole.dropped, whole.fingerprint, whole.stripped)
    assert part.src == ["café", "", "line\rwith cr", "sep", "last no newline"]  # sides are stripped: U+2028 too
    assert part.lines == [1, 3, 5, 6, 7] and part.dropped["invalid_utf8"] == 2 and part.stripped["bom"] == 1
    with pytest.raises(DataError) as exc:
        read_split(spec, "error", "x")
    assert exc.value.errors == whole_errors
    assert [e.split(": ")[0][-4:] for e in whole_errors] == ["rc:2", "rc:4"]
