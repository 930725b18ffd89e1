"""Generated manifests (`pairs:`), eval-only directions and their errors, each naming its place."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.core.typed_yaml import ConfigError
from pipeline.data.manifest import load_manifest
from pipeline.launch.data_check import check_manifest


def corpus(root: Path, langs: dict[str, int], splits: tuple[str, ...] = ("train", "dev", "test")) -> None:
    """eng-X/{split}.{eng,X} with `langs[X]` training lines (dev and test: 3 lines)."""
    for x, n in langs.items():
        d = root / f"eng-{x}"
        d.mkdir(parents=True, exist_ok=True)
        for split in splits:
            k = n if split == "train" else 3
            (d / f"{split}.eng").write_text("".join(f"english {split} {i}\n" for i in range(k)))
            (d / f"{split}.{x}").write_text("".join(f"{x} {split} {i}\n" for i in range(k)))


def manifest(root: Path, text: str) -> Path:
    path = root / "manifest.yaml"
    path.write_text(text)
    return path


def errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_manifest(path)
    return exc.value.errors


def test_a_pivot_and_both_give_each_direction_and_its_reverse_from_the_same_files(tmp_path):
    corpus(tmp_path, {"deu": 50, "bos": 5})
    m = load_manifest(manifest(tmp_path, """pairs:
  - pivot: eng
    langs: [deu, bos]
    both: true
    pattern: "eng-{x}/{split}.{lang}"
    group: {deu: hrl, bos: lrl}
"""))
    assert m.names == ["eng-deu", "deu-eng", "eng-bos", "bos-eng"]
    assert m.groups() == {"hrl": ["eng-deu", "deu-eng"], "lrl": ["eng-bos", "bos-eng"]}
    fwd, rev = m.spec("eng-deu"), m.spec("deu-eng")
    for split in ("train", "dev", "test"):
        a, b = getattr(fwd, split), getattr(rev, split)
        assert (a.src, a.tgt) == (str(tmp_path / "eng-deu" / f"{split}.eng"), str(tmp_path / "eng-deu" / f"{split}.deu"))
        assert (b.src, b.tgt) == (a.tgt, a.src)  # the same two files, sides swapped
    assert fwd.origin == "pairs[0] (eng-deu)"


def test_to_pivot_without_both_is_many_to_one_and_group_by_size_counts_training_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("MMTC_CACHE", str(tmp_path / "cache"))
    corpus(tmp_path, {"deu": 120, "fra": 100, "bos": 7})
    for f in tmp_path.glob("eng-*/*"):  # older than the 2 s a just-written file is not trusted for
        os.utime(f, (f.stat().st_mtime - 10, f.stat().st_mtime - 10))
    m = load_manifest(manifest(tmp_path, """pairs:
  - pivot: eng
    langs: [deu, fra, bos]
    to_pivot: true
    pattern: "eng-{x}/{split}.{lang}"
    group_by_size: {hrl: 100, lrl: 0}
"""))
    assert m.names == ["deu-eng", "fra-eng", "bos-eng"]
    # 120 and 100 lines reach the hrl threshold (>= 100); 7 lines only lrl's (>= 0)
    assert m.groups() == {"hrl": ["deu-eng", "fra-eng"], "lrl": ["bos-eng"]}
    # counted once: the next load reads the counts from the cache, by each file's stat
    counts = sorted(json.loads(f.read_text())["lines"] for f in (tmp_path / "cache" / "linecounts").glob("*.json"))
    assert counts == [7, 100, 120]
    (tmp_path / "eng-deu" / "train.deu").write_text("")  # same stat would be trusted; this one changed
    assert load_manifest(tmp_path / "manifest.yaml").groups() == {"hrl": ["fra-eng"], "lrl": ["deu-eng", "bos-eng"]}


def test_explicit_and_generated_directions_mix_and_a_repeat_names_both_places(tmp_path):
    corpus(tmp_path, {"deu": 10, "fra": 10})
    text = """directions:
  - src: eng
    tgt: deu
    train: {src: eng-deu/train.eng, tgt: eng-deu/train.deu}
    dev: {src: eng-deu/dev.eng, tgt: eng-deu/dev.deu}
pairs:
  - pivot: eng
    langs: [fra, deu]
    pattern: "eng-{x}/{split}.{lang}"
"""
    errs = errors(manifest(tmp_path, text))
    assert len(errs) == 1
    assert "manifest.yaml:7: pairs" in errs[0] and "eng-deu is listed twice: directions[0] and pairs[0] (eng-deu)" in errs[0]
    m = load_manifest(manifest(tmp_path, text.replace("[fra, deu]", "[fra]")))
    assert m.names == ["eng-deu", "eng-fra"]


def test_unknown_placeholders_missing_languages_and_one_sided_reverses_are_reported_together(tmp_path):
    corpus(tmp_path, {"deu": 10, "fra": 10})
    # {src}-{tgt} folders: only eng-deu and eng-fra exist, so the reverses asked for are one-sided
    (tmp_path / "eng-fra" / "test.fra").unlink()
    errs = errors(manifest(tmp_path, """pairs:
  - pivot: eng
    langs: [deu, fra, bos]
    both: true
    pattern: "{src}-{tgt}/{split}.{lang}"
  - pivot: eng
    langs: [deu]
    pattern: "eng-{x}/{split}.{language}"
"""))
    text = "\n".join(errs)
    assert "manifest.yaml:8: pairs[1].pattern: unknown placeholder {language}" in text
    assert f"eng-bos train, language bos: no file {tmp_path / 'eng-bos' / 'train.bos'}" in text
    assert f"eng-fra test, language fra: no file {tmp_path / 'eng-fra' / 'test.fra'}" in text
    one_sided = [e for e in errs if "deu-eng (the reverse asked for by both: true), train, language deu" in e]
    assert len(one_sided) == 1 and "the files are one-sided: eng-deu/train.deu exists for eng-deu" in one_sided[0]
    assert all(e.startswith(str(tmp_path / "manifest.yaml")) for e in errs)  # every error has its file:line


def test_an_eval_only_direction_needs_its_languages_trained_unless_allowed(tmp_path):
    corpus(tmp_path, {"deu": 10, "fra": 10}, splits=("train", "dev", "test"))
    (tmp_path / "zs").mkdir()
    for lang in ("deu", "fra", "kor"):
        for split in ("dev", "test"):
            (tmp_path / "zs" / f"{split}.{lang}").write_text("a\nb\n")
    text = """pairs:
  - pivot: eng
    langs: [deu, fra]
    pattern: "eng-{x}/{split}.{lang}"
  - langs: [deu, fra, kor]
    eval_only: true
    pattern: "zs/{split}.{lang}"
    splits: {dev: dev, test: test}
"""
    errs = errors(manifest(tmp_path, text))
    # eng->X training: deu and fra are targets, so deu<->fra may be scored; kor is in no trained
    # direction (its text untrained) and never a target (its tag untrained)
    assert any("deu-kor is eval-only and no trained direction translates into kor: its tag <2kor>" in e for e in errs)
    assert any("kor-deu is eval-only and kor is in no trained direction" in e for e in errs)
    assert not any(" deu-fra " in e or "fra-deu" in e for e in errs)
    m = load_manifest(manifest(tmp_path, text + "allow_untrained_languages: true\n"))
    assert m.eval_only == ["deu-fra", "deu-kor", "fra-deu", "fra-kor", "kor-deu", "kor-fra"]
    assert m.trained == ["eng-deu", "eng-fra"]
    assert m.groups()["zero-shot"] == m.eval_only
    assert m.select(["all"]) == m.trained  # `all` is what trains; eval-only directions are named
    with pytest.raises(ConfigError, match="deu-fra is eval-only"):
        m.select(["deu-fra"], trained=True)
    with pytest.raises(ConfigError, match="group 'zero-shot' has no direction with training data"):
        m.select(["group:zero-shot"], trained=True)
    assert m.select(["group:zero-shot"]) == m.eval_only  # a monitor may watch them


def test_data_check_prints_the_generated_list_with_its_files(tmp_path):
    corpus(tmp_path, {"deu": 4})
    path = manifest(tmp_path, """pairs:
  - pivot: eng
    langs: [deu]
    pattern: "eng-{x}/{split}.{lang}"
  - pivot: eng
    langs: [deu]
    to_pivot: true
    eval_only: true
    pattern: "eng-{x}/{split}.{lang}"
    splits: {dev: dev}
    group: held-out
allow_untrained_languages: true  # eng is a source only: its tag <2eng> never trains
""")
    out = check_manifest(str(path))
    assert "2 directions (1 trained, 1 eval-only)" in out
    assert "  eng-deu: train 4; dev 3; test 3" in out
    assert f"      pairs[0]: {tmp_path / 'eng-deu' / 'train.eng'} | {tmp_path / 'eng-deu' / 'train.deu'}" in out
    assert "  deu-eng [held-out]: eval-only; dev 3" in out


def test_an_opus100_layout_of_99_languages_is_a_dozen_lines(tmp_path):
    langs = [f"x{i:02d}" for i in range(99)]
    for x in langs:
        pair = "-".join(sorted(("en", x)))
        d = tmp_path / "supervised" / pair
        d.mkdir(parents=True)
        for split in ("train", "dev", "test"):
            for lang in ("en", x):
                (d / f"opus.{pair}-{split}.{lang}").write_text("a\nb\n")
    m = load_manifest(manifest(tmp_path, f"""name: opus-100
pairs:
  - pivot: en
    langs: [{", ".join(langs)}]
    both: true
    pattern: "supervised/{{pair}}/opus.{{pair}}-{{split}}.{{lang}}"
"""))
    assert len(m.names) == 198 and m.names[:2] == ["en-x00", "x00-en"]
    spec = m.spec("x42-en").train
    assert (spec.src, spec.tgt) == (str(tmp_path / "supervised/en-x42/opus.en-x42-train.x42"),
                                    str(tmp_path / "supervised/en-x42/opus.en-x42-train.en"))
