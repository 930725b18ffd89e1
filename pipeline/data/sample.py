"""The tokenizer's training text, drawn in one streaming pass over the training splits.

Languages are mixed p ∝ D^(1/τ) (`tokenizer.sample_training_text`). When every training sentence
fits in the sample (2 × train pairs <= tokenizer.max_sentences) the pass keeps them all, each
distinct sentence once, and D is a language's count of distinct sentences, exactly as before.
Otherwise it keeps at most `max_sentences` in all: D is a language's line count over the sides of
the training splits it appears on, the per-language counts are a multinomial draw of
`max_sentences` from p, and a language's sample is that many of its positions (first n of a keyed
permutation of its lines, so distinct positions; with replacement when n exceeds its lines, as
small languages are drawn before), all fixed by `tokenizer.seed` before the pass reads a line. A
drawn pair that turns out empty or invalid gives nothing, so a language may get a few fewer.
Memory: the sample, never the corpus. The same pass counts every split's invalid and empty pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from pipeline.config import TokenizerConfig
from pipeline.core.mixing import temperature_probs
from pipeline.core.permutation import KeyedPermutation
from pipeline.core.rng import rng_for
from pipeline.data.chunks import ChunkSource, merge_problems, read_chunk
from pipeline.data.encode import ordered_map
from pipeline.data.manifest import Manifest, SourceSpec

_SAMPLE = 0x534D
Wanted = dict[tuple[str, str], np.ndarray]  # (direction, "src"/"tgt") -> sorted pair indices (repeats allowed)


@dataclass
class SplitCounts:
    seen: int = 0  # pairs read, the invalid ones included
    invalid: int = 0
    empty: int = 0  # valid, but empty on a side after stripping


def mirrors(a: SourceSpec, b: SourceSpec) -> bool:
    """Whether `a` reads the pairs of `b` with the sides swapped (X->eng from eng->X's files)."""
    if a.format != b.format:
        return False
    if a.format == "text":
        return (a.src, a.tgt) == (b.tgt, b.src)
    swapped = replace(b, src_column=b.tgt_column, tgt_column=b.src_column, src_field=b.tgt_field, tgt_field=b.src_field)
    return a == swapped


def plan(manifest: Manifest, sources: dict[str, ChunkSource], cfg: TokenizerConfig) -> Wanted | None:
    """Which pairs each side gives, or None when every sentence fits (the pass keeps them all).

    A direction that mirrors an earlier one's files gives nothing: its sentences are drawn once."""
    streams: dict[str, list[tuple[str, str, int]]] = {}
    wanted: Wanted = {}
    seen: list[SourceSpec] = []
    for d in manifest.training:
        assert d.train is not None
        if any(mirrors(d.train, s) for s in seen):
            wanted[(d.name, "src")] = wanted[(d.name, "tgt")] = np.zeros(0, dtype=np.int64)
            continue
        seen.append(d.train)
        n = sources[d.name].pairs
        streams.setdefault(d.src, []).append((d.name, "src", n))
        streams.setdefault(d.tgt, []).append((d.name, "tgt", n))
    if sum(n for parts in streams.values() for *_, n in parts) <= cfg.max_sentences:
        return None
    langs = sorted(lang for lang, parts in streams.items() if sum(n for *_, n in parts))
    sizes = [sum(n for *_, n in streams[lang]) for lang in langs]
    counts = np.random.Generator(np.random.PCG64(cfg.seed)).multinomial(cfg.max_sentences,
                                                                        temperature_probs(sizes, cfg.temperature))
    for li, (lang, size, n) in enumerate(zip(langs, sizes, counts)):
        rng = rng_for(cfg.seed, li, _SAMPLE)
        if n <= size:
            pos = np.sort(KeyedPermutation(size, rng)[np.arange(n, dtype=np.int64)])
        else:
            pos = np.sort(rng.integers(0, size, int(n)))
        base = 0
        for name, side, length in streams[lang]:
            a, b = np.searchsorted(pos, [base, base + length])
            wanted[(name, side)] = pos[a:b] - base
            base += length
    return wanted


SampleJob = tuple[ChunkSource, int, "np.ndarray | None", "np.ndarray | None"]


def sample_chunk(job: SampleJob) -> tuple[SplitCounts, list[str], int, list[str], list[str]]:
    """Chunk k's counts and bad records, and its sentences: every non-empty valid pair's two sides
    (want is None) or the sides at the wanted indices (relative to the chunk)."""
    source, k, want_src, want_tgt = job
    c = read_chunk(source, k)
    src = ["" if s is None or t is None else s.strip() for s, t in zip(c.src, c.tgt)]
    tgt = ["" if s is None or t is None else t.strip() for s, t in zip(c.src, c.tgt)]
    invalid = sum(s is None or t is None for s, t in zip(c.src, c.tgt))
    full = [bool(s) and bool(t) for s, t in zip(src, tgt)]
    counts = SplitCounts(len(src), invalid, len(src) - invalid - sum(full))
    if want_src is None or want_tgt is None:
        return counts, c.problems, c.bad, [s for s, f in zip(src, full) if f], [t for t, f in zip(tgt, full) if f]
    return (counts, c.problems, c.bad, [src[i] for i in want_src if full[i]], [tgt[i] for i in want_tgt if full[i]])


def _jobs(manifest: Manifest, sources: dict[str, ChunkSource], wanted: Wanted | None):  # type: ignore[no-untyped-def]
    for d in manifest.training:
        src = sources[d.name]
        bounds = np.arange(src.chunks + 1, dtype=np.int64) * src.chunk
        cut = {side: None if wanted is None else np.searchsorted(wanted[(d.name, side)], bounds)
               for side in ("src", "tgt")}
        for k in range(src.chunks):
            pick = {side: None if wanted is None else wanted[(d.name, side)][cut[side][k]:cut[side][k + 1]] - k * src.chunk
                    for side in ("src", "tgt")}  # type: ignore[index]
            yield d.name, (src, k, pick["src"], pick["tgt"])


@dataclass
class SamplePass:
    texts: dict[str, list[str]]  # by language: each distinct sentence once (first-seen order), or the draws
    counts: dict[str, SplitCounts]  # by direction
    problems: list[str]  # bad records, named by file:line
    distinct: bool  # every sentence was kept (the sample is then drawn by `sample_training_text`)


def sample_pass(manifest: Manifest, sources: dict[str, ChunkSource], cfg: TokenizerConfig | None, workers: int,
                tick: Callable[[int], None]) -> SamplePass:
    """One pass over every training split: its counts and bad records and, unless cfg is None
    (`mmtc data check` only counts), the tokenizer's sentences."""
    wanted = None if cfg is None else plan(manifest, sources, cfg)
    keep_all = cfg is not None and wanted is None
    distinct: dict[str, dict[str, None]] = {}
    drawn: dict[str, list[str]] = {}
    counts = {d.name: SplitCounts() for d in manifest.training}
    problems: dict[str, list[tuple[list[str], int]]] = {}
    spec = {d.name: d for d in manifest.training}
    named = list(_jobs(manifest, sources, wanted))  # one small tuple per chunk
    names = [name for name, _ in named]
    jobs = (job for _, job in named)
    if cfg is None:  # counting only: no sentence comes back
        empty = np.zeros(0, dtype=np.int64)
        jobs = ((s, k, empty, empty) for s, k, _, _ in jobs)
    workers = min(workers, len(names))  # a small corpus is not worth a process per core
    for name, (c, probs, bad, src, tgt) in zip(names, ordered_map(sample_chunk, jobs, workers)):
        total = counts[name]
        total.seen, total.invalid, total.empty = total.seen + c.seen, total.invalid + c.invalid, total.empty + c.empty
        problems.setdefault(name, []).append((probs, bad))
        d = spec[name]
        if keep_all:
            for s, t in zip(src, tgt):
                distinct.setdefault(d.src, {})[s] = None
                distinct.setdefault(d.tgt, {})[t] = None
        else:
            drawn.setdefault(d.src, []).extend(src)
            drawn.setdefault(d.tgt, []).extend(tgt)
        tick(c.seen)
    bad_records = [p for name, ps in problems.items() for p in merge_problems(ps, sources[name].spec.path or "")]
    texts = {lang: list(v) for lang, v in distinct.items()} if keep_all else drawn
    return SamplePass(texts, counts, bad_records, keep_all)

