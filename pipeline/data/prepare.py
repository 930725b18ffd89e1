"""Manifest -> validated, filtered, tokenised and cached corpus, with a summary of what was dropped.

The cache is keyed by content: each split by the hash of its bytes, the filter settings and the
tokenizer model's bytes; the tokenizer by the hash of every training split and its own config.
A second run over the same data therefore neither retrains the tokenizer nor tokenises again, and,
while the files' stat is unchanged, reads none of their text (`fingerprints.py`).

Training splits stream: a byte-level pass (`scan.py`) fingerprints and validates each file and
cuts it into chunks; one pass on every core (`sample.py`) counts and draws the tokenizer's
sample; one more (`encode.encode_chunk`) tokenises chunk by chunk into the store's appendable
arrays. Memory is bounded by a chunk per worker and the tokenizer's sample, whatever the size.
Dev and test are small and exact: read whole (`corpus.read_split`) and kept with their text.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import DataConfig, RecipeConfig, TokenizerConfig
from pipeline.core.atomic import atomic_write_text
from pipeline.core.typed_yaml import to_plain
from pipeline.data.checks import check_raw, eval_drop_message
from pipeline.data.chunks import ChunkSource
from pipeline.data.corpus import DataError, RawSplit
from pipeline.data.encode import encode_pairs, select_rows, workers_here
from pipeline.data.filters import count, empty_mask, length_mask
from pipeline.data.fingerprints import remember, remembered, stat_key
from pipeline.data.manifest import Manifest, load_manifest
from pipeline.data.progress import Progress
from pipeline.data.sample import sample_pass
from pipeline.data.store import TokenSplit, load_split, save_split
from pipeline.data.summary import SPLITS, format_summary
from pipeline.data.tokenizer import Tokenizer, model_digest, train_on, train_tokenizer
from pipeline.data.train_splits import count_problems, encode_train, open_splits, specs

CACHE_VERSION = "3"  # 2: a leading BOM is stripped on read; 3: the appendable store (store.FORMAT 3)
Log = Callable[[str], None]


def cache_root(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get("MMTC_CACHE") or Path.home() / ".cache" / "mmtc")


@dataclass
class PreparedCorpus:
    manifest: Manifest
    tokenizer: Tokenizer
    splits: dict[str, dict[str, TokenSplit]]  # split -> direction -> tokens
    summary: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    # "direction split" -> {"fingerprint", "files"}: what a refused resume names when data changed
    parts: dict[str, dict[str, str]] = field(default_factory=dict)

    def sizes(self, names: list[str]) -> list[int]:
        return [len(self.splits["train"][n]) for n in names]


def _hash(*parts: str) -> str:
    h = hashlib.blake2b(digest_size=12)
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


def resolve_manifest(cfg: DataConfig, log: Log) -> Path:
    if cfg.corpus == "demo":
        from pipeline.data.demo import build_demo_corpus

        return build_demo_corpus(cache_root(cfg), log=log)
    return Path(cfg.corpus)


def load_corpus(recipe: RecipeConfig, tokenizer: Path, log: Log = print) -> PreparedCorpus:
    """The recipe's corpus for a run whose tokenizer lives at `tokenizer` (trained and cached
    first when that file does not exist yet)."""
    return prepare_corpus(recipe.data, recipe.tokenizer, log=log, tokenizer_path=tokenizer if tokenizer.is_file() else None)


def record_corpus(corpus: PreparedCorpus, path: Path) -> None:
    """Write what `open_recorded` needs to open this corpus again: each split's fingerprint."""
    parts = {k: v["fingerprint"] for k, v in corpus.parts.items()}
    atomic_write_text(path, json.dumps({"version": CACHE_VERSION, "fingerprints": parts}, indent=1) + "\n")


def open_recorded(recipe: RecipeConfig, tokenizer: Path, record: Path, log: Log = print) -> PreparedCorpus:
    """The corpus a run's launcher (or rank 0) prepared, opened from the cache by the fingerprints
    it recorded in the run directory: no text read and no file's stat taken, so every other rank,
    `mmtc eval` and `mmtc report` open it in the same fraction of a second whatever its size and
    format. Without a record (a run from before it) or a cache entry, `load_corpus`."""
    try:
        rec = json.loads(record.read_text())
    except (OSError, ValueError):
        rec = {}
    if rec.get("version") == CACHE_VERSION and tokenizer.is_file():
        mpath = resolve_manifest(recipe.data, log)
        manifest = load_manifest(mpath)
        fps = {(n, s): rec.get("fingerprints", {}).get(f"{n} {s}") for n, s, _ in specs(manifest)}
        if all(fps.values()):
            opened = _open_cached(manifest, mpath, recipe.data, recipe.tokenizer, cache_root(recipe.data), tokenizer,
                                  {k: str(v) for k, v in fps.items()}, log, why=f"by the keys in {record}")
            if opened is not None:
                return opened
    return load_corpus(recipe, tokenizer, log)


def prepare_corpus(
    data: DataConfig, tok_cfg: TokenizerConfig, log: Log = print, manifest_path: Path | None = None,
    tokenizer_path: Path | None = None,
) -> PreparedCorpus:
    """Load the corpus named by `data`; reuse `tokenizer_path` if given (resume, eval), else train/cache one.

    When every split's fingerprint is remembered for its files' stat (`fingerprints.py`) and its
    tokens and the tokenizer are cached, the corpus opens from the cache without reading any text."""
    mpath = manifest_path or resolve_manifest(data, log)
    manifest = load_manifest(mpath)
    root = cache_root(data)
    keys = {(name, split): stat_key(spec) for name, split, spec in specs(manifest)}
    known = {k: remembered(root, key) for k, key in keys.items()}
    if all(fp is not None for fp in known.values()):
        opened = _open_cached(manifest, mpath, data, tok_cfg, root, tokenizer_path,
                              {k: str(fp) for k, fp in known.items()}, log)
        if opened is not None:
            return opened
    sources, evals = open_splits(manifest, data.on_invalid)
    problems = check_raw(evals, data)
    if problems:
        raise DataError(problems)
    fps = {**{(n, "train"): src.fingerprint for n, src in sources.items()},
           **{k: r.fingerprint for k, r in evals.items()}}
    origins = {(name, split): spec.describe() for name, split, spec in specs(manifest)}
    workers = workers_here()
    if tokenizer_path is None:
        tokenizer = _tokenizer(manifest, sources, tok_cfg, root, log, workers)
    else:
        tokenizer = Tokenizer(tokenizer_path)
    token_path = _token_paths(root, tokenizer, data)
    loaded: dict[tuple[str, str], TokenSplit] = {}
    errors: list[str] = []
    for (name, split), rs in evals.items():
        path = token_path(rs.fingerprint, split)
        ts = load_split(path)
        if ts is None:
            try:
                ts = _tokenize(rs, tokenizer, data, name, split)
            except DataError as exc:
                errors.extend(exc.errors)
                continue
            save_split(path, ts)
        loaded[(name, split)] = ts
    cached = {n: load_split(token_path(s.fingerprint, "train")) for n, s in sources.items()}
    progress = Progress("tokenising", sum(s.pairs for n, s in sources.items() if cached[n] is None), log)
    for name, src in sources.items():
        ts = cached[name]
        try:
            loaded[(name, "train")] = ts if ts is not None else encode_train(
                src, tokenizer, data, token_path(src.fingerprint, "train"), workers, progress.tick)
        except DataError as exc:
            errors.extend(exc.errors)
    progress.close()
    if errors:
        raise DataError(errors)
    for k, key in keys.items():  # only now: a split is remembered once everything built from it is cached
        remember(root, key, fps[k], origins[k])
    ordered = {(n, s): loaded[(n, s)] for n, s, _ in specs(manifest)}
    return _assemble(manifest, mpath, tokenizer, ordered, fps, origins, log)


def _token_paths(root: Path, tokenizer: Tokenizer, data: DataConfig) -> Callable[[str, str], Path]:
    """Where a split's tokens are cached: by its fingerprint, the tokenizer model's bytes and the
    filter settings (train and eval splits are filtered differently)."""
    tok_hash = model_digest(tokenizer.path)
    filt = json.dumps([data.max_len, data.max_len_ratio, data.allow_eval_drops, data.filter_eval, CACHE_VERSION])
    return lambda fingerprint, split: root / "tokens" / _hash(fingerprint, tok_hash, filt,
                                                             "train" if split == "train" else "eval")


def _open_cached(manifest: Manifest, mpath: Path, data: DataConfig, tok_cfg: TokenizerConfig, root: Path,
                 tokenizer_path: Path | None, fps: dict[tuple[str, str], str], log: Log,
                 why: str = "the files' size, mtime and inode are unchanged, MMTC_REHASH=1 hashes them again",
                 ) -> PreparedCorpus | None:
    """The corpus from the cache alone, or None when any part of it is not cached."""
    if tokenizer_path is None:
        path = _tokenizer_path(manifest, {d.name: fps[(d.name, "train")] for d in manifest.training}, tok_cfg, root)
        if not path.is_file():
            return None
        log(f"tokenizer: cached {path}")
        tokenizer_path = path
    tokenizer = Tokenizer(tokenizer_path)
    token_path = _token_paths(root, tokenizer, data)
    splits: dict[tuple[str, str], TokenSplit] = {}
    for (name, split), fp in fps.items():
        ts = load_split(token_path(fp, split))
        if ts is None:
            return None
        splits[(name, split)] = ts
    origins = {(name, split): spec.describe() for name, split, spec in specs(manifest)}
    log(f"corpus: opened from the cache ({len(splits)} splits; no text read: {why})")
    return _assemble(manifest, mpath, tokenizer, splits, fps, origins, log)


def _assemble(manifest: Manifest, mpath: Path, tokenizer: Tokenizer, loaded: dict[tuple[str, str], TokenSplit],
              fps: dict[tuple[str, str], str], origins: dict[tuple[str, str], str], log: Log) -> PreparedCorpus:
    splits: dict[str, dict[str, TokenSplit]] = {s: {} for s in SPLITS}
    summary: dict[str, Any] = {"manifest": str(mpath), "directions": {}}
    for (name, split), ts in loaded.items():
        splits[split][name] = ts
        meta = ts.meta or {}
        entry = summary["directions"].setdefault(name, {})
        entry[split] = {"pairs": len(ts), "dropped": meta.get("dropped", {}), "seen": meta.get("seen", len(ts)),
                        **({"stripped": meta["stripped"]} if meta.get("stripped") else {})}
    for d in manifest.directions:
        summary["directions"][d.name]["group"] = d.group
        if not d.trains:
            summary["directions"][d.name]["eval_only"] = True
    summary["tokenizer"] = {"vocab_size": tokenizer.vocab_size, "path": str(tokenizer.path)}
    log(format_summary(summary))
    fingerprint = _hash(*(f"{n}/{s}/{fp}" for (n, s), fp in sorted(fps.items())))
    parts = {f"{n} {s}": {"fingerprint": fp, "files": origins[(n, s)]} for (n, s), fp in sorted(fps.items())}
    return PreparedCorpus(manifest, tokenizer, splits, summary, fingerprint, parts)


def _tokenizer_path(manifest: Manifest, train_fps: dict[str, str], cfg: TokenizerConfig, root: Path) -> Path:
    """Where the tokenizer for these training splits (by direction) and settings is cached."""
    key = _hash(*(train_fps[d.name] for d in manifest.training), json.dumps(to_plain(cfg)), *manifest.languages)
    return root / "tokenizers" / key / "spm.model"


def _tokenizer(manifest: Manifest, sources: dict[str, ChunkSource], cfg: TokenizerConfig, root: Path,
               log: Log, workers: int) -> Tokenizer:
    langs = manifest.languages
    path = _tokenizer_path(manifest, {d.name: sources[d.name].fingerprint for d in manifest.training}, cfg, root)
    if path.is_file():
        log(f"tokenizer: cached {path}")
        return Tokenizer(path)
    progress = Progress("tokenizer sample", sum(s.pairs for s in sources.values()), log)
    drawn = sample_pass(manifest, sources, cfg, workers, progress.tick)
    progress.close()
    errors = drawn.problems + count_problems(sources, drawn.counts)
    if errors:
        raise DataError(errors)
    per_lang = {lang: len(v) for lang, v in sorted(drawn.texts.items())}
    if drawn.distinct:
        log(f"tokenizer: training {cfg.model_type} vocab {cfg.vocab_size} on {sum(per_lang.values())} "
            f"distinct sentences (τ={cfg.temperature})")
        tok = train_tokenizer(drawn.texts, langs, cfg, path, threads=workers)
    else:
        log(f"tokenizer: training {cfg.model_type} vocab {cfg.vocab_size} on a sample of {sum(per_lang.values())} "
            f"sentences (τ={cfg.temperature}, at most tokenizer.max_sentences={cfg.max_sentences}): "
            + ", ".join(f"{lang} {n}" for lang, n in per_lang.items()))
        tok = train_on([s for lang in sorted(drawn.texts) for s in drawn.texts[lang]], langs, cfg, path, workers)
    sample_file = path.with_name("sample.json")
    sample_file.write_text(json.dumps({"distinct": drawn.distinct, "sentences": per_lang}, indent=1) + "\n")
    return tok


def _tokenize(rs: RawSplit, tok: Tokenizer, cfg: DataConfig, name: str, split: str) -> TokenSplit:
    nonempty = empty_mask(rs.src, rs.tgt)
    src_flat, src_lens, tgt_flat, tgt_lens = encode_pairs(tok.path, rs.src, rs.tgt)
    too_long, bad_ratio = length_mask(src_lens, tgt_lens, cfg.max_len, cfg.max_len_ratio)
    if split != "train" and not cfg.filter_eval:
        too_long[:], bad_ratio[:] = False, False
    empty = ~nonempty
    too_long &= nonempty
    bad_ratio &= nonempty
    drops = count({"empty": empty, "too_long": too_long, "bad_ratio": bad_ratio})
    drops.update(rs.dropped)
    lines = np.asarray(rs.lines, dtype=np.int64)
    if split != "train" and drops and not cfg.allow_eval_drops:
        raise DataError([eval_drop_message(name, split, rs, empty, too_long, bad_ratio, drops)])
    keep = nonempty & ~too_long & ~bad_ratio
    if not keep.any():
        raise DataError([f"{name} {split} ({rs.origin}): no pairs left after filtering "
                         f"(dropped: {dict(drops)}); check the files or data.max_len / data.max_len_ratio"])
    idx = np.flatnonzero(keep)
    src, src_off = select_rows(src_flat, src_lens, keep)
    tgt, tgt_off = select_rows(tgt_flat, tgt_lens, keep)
    texts = None
    if split != "train":
        texts = {"src": [rs.src[i] for i in idx], "tgt": [rs.tgt[i] for i in idx]}
    meta = {"seen": len(rs.src) + sum(rs.dropped.values()), "dropped": dict(drops), "origin": rs.origin,
            **({"stripped": dict(rs.stripped)} if rs.stripped else {})}
    return TokenSplit(src, src_off, tgt, tgt_off, lines[idx], texts, meta)


def copy_tokenizer(corpus: PreparedCorpus, run_dir: Path) -> Path:
    dest = run_dir / "tokenizer" / "spm.model"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        shutil.copyfile(corpus.tokenizer.path, dest)
    return dest
