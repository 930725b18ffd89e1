import json

from pipeline.checkpoint import commit as ckpt


def make_tag(root, step, final=False, commit=True):
    tag = ckpt.tag_for(step, "main", final)
    d = root / tag
    d.mkdir(parents=True)
    (d / "model.pt").write_bytes(b"x" * (100 + step))
    (d / "sub").mkdir()
    (d / "sub" / "opt.pt").write_bytes(b"y" * 50)
    if commit:
        ckpt.commit(root, tag, {"step": step, "final": final})
    return d


def test_commit_then_discover(tmp_path):
    make_tag(tmp_path, 10)
    make_tag(tmp_path, 20)
    found, notes = ckpt.discover(tmp_path)
    assert found.tag == ckpt.tag_for(20, "main") and found.step == 20 and notes == []
    assert (tmp_path / ckpt.LATEST).read_text().strip() == found.tag


def test_uncommitted_tag_is_ignored_and_said_so(tmp_path):
    make_tag(tmp_path, 10)
    make_tag(tmp_path, 20, commit=False)  # a save that died half-way
    found, notes = ckpt.discover(tmp_path)
    assert found.step == 10
    assert any("no commit marker" in n for n in notes)


def test_truncated_or_corrupt_file_is_detected(tmp_path):
    make_tag(tmp_path, 10)
    d = make_tag(tmp_path, 20)
    (d / "sub" / "opt.pt").write_bytes(b"y" * 20)
    found, notes = ckpt.discover(tmp_path)
    assert found.step == 10
    assert any("has 20 bytes, the commit recorded 50" in n for n in notes)
    (d / "sub" / "opt.pt").write_bytes(b"z" * 50)  # same size, other bytes
    found, notes = ckpt.discover(tmp_path)
    assert found.step == 10 and any("does not match its checksum" in n for n in notes)


def test_prune_keeps_last_k_and_every_final(tmp_path):
    make_tag(tmp_path, 10)
    make_tag(tmp_path, 20, final=True)
    make_tag(tmp_path, 30)
    make_tag(tmp_path, 40)
    make_tag(tmp_path, 45, commit=False)  # a failed save after the newest commit: kept (may be in progress)
    make_tag(tmp_path, 35, commit=False)  # debris older than the newest commit: removed
    removed = ckpt.prune(tmp_path, keep_last=2)
    left = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert left == [ckpt.tag_for(s, "main", s == 20) for s in (20, 30, 40)] + [ckpt.tag_for(45, "main")]
    assert set(removed) == {ckpt.tag_for(10, "main"), ckpt.tag_for(35, "main")}
    meta = json.loads((tmp_path / ckpt.tag_for(20, "main", True) / ckpt.COMMIT).read_text())
    assert meta["final"] is True and "model.pt" in meta["files"]


def test_prune_spares_the_tags_keep_best_names(tmp_path):
    for s in (10, 20, 30, 40):
        make_tag(tmp_path, s)
    removed = ckpt.prune(tmp_path, keep_last=1, keep={ckpt.tag_for(20, "main")})
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [ckpt.tag_for(20, "main"), ckpt.tag_for(40, "main")]
    assert set(removed) == {ckpt.tag_for(10, "main"), ckpt.tag_for(30, "main")}
