"""Tokenising on every core gives exactly the ids of one in-process encode, in order."""

import numpy as np

from pipeline.config import TokenizerConfig
from pipeline.data import encode
from pipeline.data.tokenizer import train_tokenizer

from corpus_factory import sentences


def test_parallel_chunks_equal_one_encode_and_rows_are_selected(tmp_path, monkeypatch):
    src = sentences(500, seed=1)
    tgt = [s.upper() for s in src]
    tok = train_tokenizer({"eng": src, "upp": tgt}, ["eng", "upp"], TokenizerConfig(vocab_size=400), tmp_path / "spm.model")
    monkeypatch.setattr(encode, "CHUNK", 64)  # several chunks, so the pool really splits the work
    forked = encode.encode_pairs(tok.path, src, tgt, workers=2)
    alone = encode.encode_pairs(tok.path, src, tgt, workers=1)
    ids = tok.encode(src)
    assert np.array_equal(forked[0], np.concatenate([np.array(x, dtype=np.int32) for x in ids]))
    assert forked[1].tolist() == [len(x) for x in ids]
    assert all(np.array_equal(a, b) for a, b in zip(forked, alone))
    keep = np.arange(len(src)) % 3 == 0
    flat, off = encode.select_rows(forked[0], forked[1], keep)
    kept = [x for x, k in zip(ids, keep) if k]
    assert off.tolist() == np.concatenate([[0], np.cumsum([len(x) for x in kept])]).tolist()
    assert flat.tolist() == [t for x in kept for t in x]


def test_the_pool_stops_its_workers_under_a_flag_only_sigterm_handler():
    """A run's preemption handler only sets a flag; forked workers inherit it, and a pool that
    stops its workers with SIGTERM then waited for ever (the suite hung in a sweep test)."""
    import subprocess
    import sys

    code = """
import signal
from pipeline.data.encode import ordered_map
signal.signal(signal.SIGTERM, lambda *a: None)
print(sum(ordered_map(abs, range(-50, 0), 2)))
print(set(ordered_map(signal.getsignal, [signal.SIGTERM, signal.SIGINT] * 4, 2)))
for _ in range(100):
    assert sum(ordered_map(abs, [-1], 2)) == 1  # one job for two workers: the second may still be starting
    g = ordered_map(abs, range(-5, 0), 2)
    next(g)
    g.close()  # abandoned: the pool is terminated while its workers may not have reset their handlers
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    total, handlers = out.stdout.strip().splitlines()
    assert total == "1275"
    assert handlers == "{<Handlers.SIG_DFL: 0>, <Handlers.SIG_IGN: 1>}"  # the workers' own: SIGTERM stops them
