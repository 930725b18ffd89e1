"""Tokenising on every core, chunk by chunk, into flat arrays; the worker pool the passes over a
training split share.

SentencePiece returns Python lists of ints (about 41 bytes per token before they become an int32
array), and building those lists, not the C++ encoder, is what kept tokenising on about one core.
So each chunk of `CHUNK` pairs is encoded in a worker process and comes back as arrays (4 bytes a
token); the parent only concatenates. The ids are those of `Tokenizer.encode`, in the same order.

Workers are forked: a fork copies the parent's loaded modules for free, but is unsafe in a process
that already runs a torch.distributed group (its communication threads do not survive a fork), so
such a process, or a machine with one core, tokenises in-process with the same chunking.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import signal
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import sentencepiece as spm

from pipeline.core.hostinfo import usable_cores
from pipeline.data.chunks import CHUNK, ChunkSource, read_chunk
from pipeline.data.filters import length_mask

J = TypeVar("J")
R = TypeVar("R")

_worker_sp: spm.SentencePieceProcessor | None = None


def ragged_ids(sp: spm.SentencePieceProcessor, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(flat int32 ids, int64 length per text)."""
    ids = sp.encode(list(texts), num_threads=1)
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lens.sum()))
    return flat, lens


def _init(model: str | None) -> None:
    global _worker_sp
    _worker_sp = None if model is None else spm.SentencePieceProcessor(model_file=model)


def _worker_init(model: str | None) -> None:
    # A fork inherits the parent's handlers: a preemption handler that only sets a flag would make
    # the pool's SIGTERM unable to stop its workers. The parent forks with SIGTERM blocked, so one
    # sent before this line stays pending and, unblocked here, stops the worker. Ctrl-C is the
    # parent's to handle.
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    _init(model)


def _encode_pair(chunk: tuple[list[str], list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    assert _worker_sp is not None
    return (*ragged_ids(_worker_sp, chunk[0]), *ragged_ids(_worker_sp, chunk[1]))


def workers_here() -> int:
    """How many processes to tokenise with: every core this process may use, or 1 where forking is
    unsafe (an initialised torch.distributed group) or pointless."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return 1
    return usable_cores()


def encode_pairs(model: Path, src: Sequence[str], tgt: Sequence[str], workers: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(src ids, src lengths, tgt ids, tgt lengths) of every pair, flat."""
    n = workers if workers is not None else workers_here()
    chunks = [(list(src[i:i + CHUNK]), list(tgt[i:i + CHUNK])) for i in range(0, len(src), CHUNK)]
    parts = list(ordered_map(_encode_pair, chunks, min(n, len(chunks)), model))
    if not parts:
        empty_ids, empty_lens = np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
        return empty_ids, empty_lens, empty_ids, empty_lens
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(4))  # type: ignore[return-value]


def select_rows(flat: np.ndarray, lens: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The kept rows of a ragged array, as (flat ids, offsets)."""
    kept_lens = lens[keep]
    off = np.zeros(len(kept_lens) + 1, dtype=np.int64)
    np.cumsum(kept_lens, out=off[1:])
    return flat[np.repeat(keep, lens)], off


def ordered_map(fn: Callable[[J], R], jobs: Iterable[J], workers: int, model: Path | None = None) -> Iterator[R]:
    """fn(job) for each job, in order, on `workers` forked processes (each with the SentencePiece
    `model` loaded), at most two jobs per worker in flight: memory stays bounded whatever the
    number of jobs (a Pool's imap would queue them all)."""
    init = None if model is None else str(model)
    if workers <= 1:
        _init(init)
        yield from map(fn, jobs)
        return
    # Blocked while the pool forks (its handler threads, which fork replacements, inherit the mask).
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        pool = mp.get_context("fork").Pool(workers, initializer=_worker_init, initargs=(init,))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    done = False
    try:
        pending: deque[Any] = deque()
        for job in jobs:
            pending.append(pool.apply_async(fn, (job,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        done = True
    finally:
        if done:
            pool.close()  # the workers take their sentinels and exit: no signal needed
        else:
            pool.terminate()  # an error or an abandoned generator: stop them now
        pool.join()


EncodeJob = tuple[ChunkSource, int, int, float, bool]


Encoded = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, Counter[str], list[str], int]


def encode_chunk(job: EncodeJob) -> Encoded:
    """Read, validate, filter and tokenise chunk k of a split in this process: the kept pairs' (src
    ids, src lengths, tgt ids, tgt lengths, 1-based source lines), what was dropped, by reason, and
    the chunk's bad records (the first few, and how many).
    `filtered`: apply the length filters (always for train; dev/test only with data.filter_eval)."""
    assert _worker_sp is not None
    source, k, max_len, max_ratio, filtered = job
    c = read_chunk(source, k)
    valid = [i for i, (s, t) in enumerate(zip(c.src, c.tgt)) if s is not None and t is not None]
    drops: Counter[str] = Counter()
    if len(valid) < len(c.src):
        drops["invalid_utf8"] = len(c.src) - len(valid)
    src = [c.src[i].strip() for i in valid]  # type: ignore[union-attr]
    tgt = [c.tgt[i].strip() for i in valid]  # type: ignore[union-attr]
    full = [j for j, (s, t) in enumerate(zip(src, tgt)) if s and t]
    if len(full) < len(src):
        drops["empty"] = len(src) - len(full)
    s_ids, s_lens = ragged_ids(_worker_sp, [src[j] for j in full])
    t_ids, t_lens = ragged_ids(_worker_sp, [tgt[j] for j in full])
    keep = np.ones(len(full), dtype=bool)
    if filtered:
        too_long, bad_ratio = length_mask(s_lens, t_lens, max_len, max_ratio)
        drops.update({why: int(m.sum()) for why, m in (("too_long", too_long), ("bad_ratio", bad_ratio)) if m.any()})
        keep = ~too_long & ~bad_ratio
    s_ids, s_off = select_rows(s_ids, s_lens, keep)
    t_ids, t_off = select_rows(t_ids, t_lens, keep)
    lines = c.first + 1 + np.asarray(valid, dtype=np.int64)[np.asarray(full, dtype=np.int64)[keep]]
    return s_ids, np.diff(s_off), t_ids, np.diff(t_off), lines, drops, c.problems, c.bad
