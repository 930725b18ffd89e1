"""`mmtc translate`'s streaming path: lines in, translations out, in input order, in bounded memory.

Lines are read in windows; a window is sorted by length and cut into token-budget batches by
`translate_ids` (as `mmtc eval` decodes), then written back in input order before the next window
is read. With `--nproc N`, N worker processes (one per GPU where there are GPUs) each translate
whole windows; at most 2N windows are in flight, so a 1M-line file is never held at once.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import torch

from pipeline.checkpoint.weights import load_model
from pipeline.core.hostinfo import usable_cores
from pipeline.data.tokenizer import Tokenizer
from pipeline.evaluation.evaluate import translate_ids
from pipeline.rundir.layout import RunDir


@dataclass(frozen=True)
class TranslateJob:
    run_dir: str
    tgt: str
    checkpoint: str | None = None
    beam: int | None = None
    batch_tokens: int | None = None
    device: str = "cpu"
    threads: int = 0


class LineTranslator:
    """A run's model and tokenizer, translating lists of lines into one target language."""

    def __init__(self, job: TranslateJob) -> None:
        run = RunDir(job.run_dir)
        self.recipe = run.load_config()
        if job.beam:
            self.recipe.eval.beam = job.beam
        if job.batch_tokens:
            self.recipe.eval.batch_tokens = job.batch_tokens
        if job.threads:
            torch.set_num_threads(job.threads)
        self.tok = Tokenizer(run.tokenizer)
        self.tag_id = self.tok.tag_id(job.tgt)
        self.device = torch.device(job.device)
        self.model, self.checkpoint = load_model(run, self.recipe, self.tok.vocab_size, self.tok.pad_id,
                                                 job.checkpoint, self.device)
        # The tag, the sentence and eos must fit the position table.
        self.max_source = self.model.max_positions - 2

    def translate(self, lines: list[str]) -> tuple[list[str], int]:
        """Translations of `lines` (empty for an empty line) and how many sources were truncated."""
        texts = [line.strip() for line in lines]
        keep = [i for i, t in enumerate(texts) if t]
        ids = self.tok.encode([texts[i] for i in keep])
        cut = sum(len(s) > self.max_source for s in ids)
        ids = [s[: self.max_source] for s in ids]
        out = [""] * len(lines)
        if ids:
            hyps = translate_ids(self.model, ids, self.tag_id, self.tok, self.recipe.eval, self.device)
            for i, h in zip(keep, self.tok.decode_batch(hyps)):
                out[i] = h
        return out, cut


def windows(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    window: list[str] = []
    for line in lines:
        window.append(line.rstrip("\r\n"))
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


_worker: LineTranslator | None = None


def _init_worker(job: TranslateJob) -> None:
    global _worker
    _worker = LineTranslator(job)


def _translate_window(lines: list[str]) -> tuple[list[str], int]:
    assert _worker is not None
    return _worker.translate(lines)


def worker_jobs(job: TranslateJob, nproc: int) -> list[TranslateJob]:
    """One job per process: GPU i % count where there are GPUs, else the CPU cores shared out."""
    if job.device.startswith("cuda") and torch.cuda.is_available():
        n = torch.cuda.device_count()
        return [dataclasses.replace(job, device=f"cuda:{i % n}") for i in range(nproc)]
    threads = job.threads or max(1, usable_cores() // nproc)
    return [dataclasses.replace(job, threads=threads) for _ in range(nproc)]


def translate_stream(job: TranslateJob, source: IO[str], sink: IO[str], nproc: int = 1, window: int = 4096,
                     total: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Translate every line of `source` into `sink`, in order; returns counts."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="line", dynamic_ncols=True, file=sys.stderr)
    counts = {"lines": 0, "truncated": 0}

    def emit(result: tuple[list[str], int]) -> None:
        hyps, cut = result
        sink.write("".join(h + "\n" for h in hyps))
        sink.flush()
        counts["lines"] += len(hyps)
        counts["truncated"] += cut
        if bar is not None:
            bar.update(len(hyps))

    try:
        if nproc <= 1:
            translator = LineTranslator(job)
            for w in windows(source, window):
                emit(translator.translate(w))
        else:
            _run_pool(worker_jobs(job, nproc), source, window, emit)
    finally:
        if bar is not None:
            bar.close()
    return counts


def _run_pool(jobs: list[TranslateJob], source: IO[str], window: int, emit: Any) -> None:
    # One single-process pool per job, so that each keeps its own device; windows go round-robin
    # and come back in order. Spawned: a forked child inherits the parent's OpenMP state.
    ctx = mp.get_context("spawn")
    pools = [ctx.Pool(1, initializer=_init_worker, initargs=(j,)) for j in jobs]
    pending: deque[Any] = deque()
    try:
        for k, w in enumerate(windows(source, window)):
            pending.append(pools[k % len(pools)].apply_async(_translate_window, (w,)))
            while len(pending) >= 2 * len(pools):
                emit(pending.popleft().get())
        while pending:
            emit(pending.popleft().get())
    finally:
        for p in pools:
            p.terminate()
            p.join()
