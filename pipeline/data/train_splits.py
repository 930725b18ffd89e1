"""The passes over training splits that stream (see `prepare`): the first, byte-level pass of every
split, the refusals a pass's counts give, and tokenising a split chunk by chunk into a cache entry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.config import DataConfig
from pipeline.data.checks import train_unusable
from pipeline.data.chunks import ChunkSource, merge_problems, open_source
from pipeline.data.corpus import DataError, RawSplit, read_split
from pipeline.data.encode import encode_chunk, ordered_map
from pipeline.data.filters import REASONS
from pipeline.data.manifest import Manifest, SourceSpec
from pipeline.data.sample import SplitCounts
from pipeline.data.store import SplitWriter, TokenSplit, load_split
from pipeline.data.summary import SPLITS
from pipeline.data.tokenizer import Tokenizer


def specs(manifest: Manifest) -> list[tuple[str, str, SourceSpec]]:
    """(direction, split, source) of every split in the manifest, in its order."""
    out = []
    for d in manifest.directions:
        for split in SPLITS:
            spec = d.split(split)
            if spec is not None:
                out.append((d.name, split, spec))
    return out


def open_splits(manifest: Manifest, on_invalid: str) -> tuple[dict[str, ChunkSource], dict[tuple[str, str], RawSplit]]:
    """Every training split's first pass (`chunks.open_source`) and every dev/test split read whole,
    collecting every data error before raising (one report, not one per run)."""
    errors: list[str] = []
    sources: dict[str, ChunkSource] = {}
    evals: dict[tuple[str, str], RawSplit] = {}
    for name, split, spec in specs(manifest):
        try:
            if split == "train":
                sources[name] = open_source(spec, on_invalid, f"{name} {split}")
            else:
                evals[(name, split)] = read_split(spec, on_invalid, f"{name} {split}")
        except DataError as exc:
            errors.extend(exc.errors)
    if errors:
        raise DataError(errors)
    return sources, evals


def count_problems(sources: dict[str, ChunkSource], counts: dict[str, SplitCounts]) -> list[str]:
    """`train_unusable` for each training split, from a pass's counts."""
    out = []
    for name, c in counts.items():
        msg = train_unusable(name, sources[name].origin, c.seen - c.invalid, c.invalid, c.seen - c.invalid - c.empty)
        out += [msg] if msg else []
    return out


def encode_train(source: ChunkSource, tok: Tokenizer, cfg: DataConfig, path: Path, workers: int,
                  tick: Callable[[int], None]) -> TokenSplit:
    """Tokenise a training split chunk by chunk on `workers` processes into a new cache entry."""
    jobs = ((source, k, cfg.max_len, cfg.max_len_ratio, True) for k in range(source.chunks))
    drops: dict[str, int] = dict.fromkeys(REASONS, 0)
    problems: list[tuple[list[str], int]] = []
    with SplitWriter(path) as writer:
        for s_ids, s_lens, t_ids, t_lens, lines, dropped, probs, bad in ordered_map(
                encode_chunk, jobs, min(workers, source.chunks), tok.path):
            writer.append(s_ids, s_lens, t_ids, t_lens, lines)
            for why, n in dropped.items():
                drops[why] += n
            problems.append((probs, bad))
            tick(len(lines) + sum(dropped.values()))
        bad_records = merge_problems(problems, source.spec.path or "")
        if bad_records:
            raise DataError(bad_records)
        invalid, empty = drops["invalid_utf8"], drops["empty"]
        unusable = train_unusable(source.where.split()[0], source.origin, source.pairs - invalid, invalid,
                                  source.pairs - invalid - empty)
        if unusable:
            raise DataError([unusable])
        # the order the in-memory path reports them in: filters first, then what reading dropped
        dropped_all = {why: drops[why] for why in ("empty", "too_long", "bad_ratio", "invalid_utf8") if drops[why]}
        if not writer.pairs:
            raise DataError([f"{source.where} ({source.origin}): no pairs left after filtering "
                             f"(dropped: {dropped_all}); check the files or data.max_len / data.max_len_ratio"])
        meta = {"seen": source.pairs, "dropped": dropped_all, "origin": source.origin,
                **({"stripped": source.stripped} if source.stripped else {})}
        writer.commit(None, meta)
    out = load_split(path)
    assert out is not None
    return out
