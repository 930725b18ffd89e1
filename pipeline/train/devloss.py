"""Dev loss per direction during training, split across ranks and summed with one all-reduce."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.data.batches import Batch, collate, pack
from pipeline.data.prepare import PreparedCorpus
from pipeline.engine.collectives import Dist, all_reduce_sum
from pipeline.engine.ds_engine import Engine


class DevLoss:
    """Teacher-forced NLL per target token on every direction's dev set.

    The batches are fixed once; rank r scores batches r, r+W, ... Under ZeRO-3 every forward is a
    collective, so ranks with fewer batches repeat one with weight 0 to keep the counts equal.
    """

    def __init__(self, corpus: PreparedCorpus, dist: Dist, max_tokens: int = 6000) -> None:
        self.names = corpus.manifest.names
        self.dist = dist
        specs = {d.name: d for d in corpus.manifest.directions}
        self.batches: list[Batch] = []
        for i, name in enumerate(self.names):
            split = corpus.splits["dev"][name]
            tag = corpus.tokenizer.tag_id(specs[name].tgt)
            sizes = np.maximum(split.src_lens + 2, split.tgt_lens + 1)
            for rows in pack(sizes, np.argsort(sizes, kind="stable"), max(max_tokens, int(sizes.max()))):
                self.batches.append(collate([(0, int(j)) for j in rows], [split], [tag], [i]))

    @torch.no_grad()
    def losses(self, engine: Engine) -> dict[str, float]:
        w, r = self.dist.world, self.dist.rank
        mine = self.batches[r::w]
        rounds = -(-len(self.batches) // w)
        acc = torch.zeros(2, len(self.names), dtype=torch.float64)
        dev = self.dist.device
        for k in range(rounds):
            real = k < len(mine)
            b = mine[k] if real else self.batches[0]
            _, nll = engine(b.src.to(dev), b.tgt_in.to(dev), b.tgt_out.to(dev))
            if real:
                acc[0].index_add_(0, b.direction, nll.sum(1).double().cpu())
                acc[1].index_add_(0, b.direction, (b.tgt_out != 0).sum(1).double())
        acc = all_reduce_sum(acc)
        return {n: round(float(acc[0, i] / acc[1, i]), 6) for i, n in enumerate(self.names)}
