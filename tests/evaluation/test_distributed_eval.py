"""Decoding shared by every rank: the one-rank batches dealt out by tokens, gathered on rank 0 in
input order, with the outputs and scores of one process decoding alone."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pipeline.engine.collectives import Dist
from pipeline.evaluation.evaluate import _length_batches, _my_batches


def dist(rank: int, world: int) -> Dist:
    import torch

    return Dist(rank, world, rank, torch.device("cpu"))


def test_every_batch_is_decoded_by_exactly_one_rank_balanced_by_tokens():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=500)
    batches = _length_batches(lengths, 400)
    cost = [len(b) * int(lengths[b].max()) for b in batches]
    for world in (2, 3, 4):
        deal = [_my_batches(batches, lengths, dist(r, world)) for r in range(world)]
        assert sorted(i for d in deal for i in d) == list(range(len(batches)))
        loads = [sum(cost[i] for i in d) for d in deal]
        # longest-first to the least loaded: no rank is over the fair share by more than one batch
        assert max(loads) - min(loads) <= max(cost), (loads, max(cost))
    assert _my_batches(batches, lengths, None) == list(range(len(batches)))
    assert _my_batches(batches, lengths, dist(0, 1)) == list(range(len(batches)))


@pytest.mark.slow
def test_two_rank_stage_end_decoding_equals_one_process(two_rank_ref, mmtc_env, tmp_path):
    """The reference run's stage ends were decoded by its 2 ranks; `mmtc eval` decodes the same
    checkpoints in one process: every hypothesis and score must be the same."""
    _, _, ref, _ = two_rank_ref
    run = tmp_path / "run"
    shutil.copytree(ref, run, ignore=shutil.ignore_patterns(".lock"))
    tags = sorted(p.name for p in (run / "eval").iterdir())
    assert len(tags) == 2  # one per stage
    for tag in tags:
        for split in ("dev", "test"):
            shared = json.loads((run / "eval" / tag / f"{split}.json").read_text())
            assert shared["decoded_by"] == 2, (tag, split)
            hyps = {p.name: p.read_text() for p in (run / "eval" / tag / split).glob("*.hyp")}
            proc = subprocess.run([sys.executable, "-m", "pipeline", "eval", str(run), "--split", split,
                                   "--checkpoint", tag], env=mmtc_env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            alone = json.loads((run / "eval" / tag / f"{split}.json").read_text())
            assert "decoded_by" not in alone
            assert {p.name: p.read_text() for p in (run / "eval" / tag / split).glob("*.hyp")} == hyps
            assert len(hyps) == 3 and all(h.count("\n") > 10 for h in hyps.values())
            for name, e in shared["directions"].items():
                for key in ("bleu", "chrf", "chrfpp", "loss", "sentences"):
                    assert e[key] == alone["directions"][name][key], (tag, split, name, key)
