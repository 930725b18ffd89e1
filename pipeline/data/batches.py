"""Token-budget micro-batches whose direction mix follows the sampler, in a resumable order.

Steps are grouped into chunks of `chunk_steps`. With a `period` (a dynamic policy's update
cadence) chunks never straddle a multiple of it: each period is cut into chunks of `chunk_steps`,
its last one shorter, so a p updated after step k·period drives exactly the steps from there.
For chunk c the stream draws directions from the sampler's p (frozen at the chunk's start) with a generator seeded by (seed, stage, c), takes each
direction's examples in the order of a per-epoch permutation (seeded by seed, stage, direction,
epoch; computed, not stored: `core.permutation`) from a saved cursor, sorts them by length, packs them into micro-batches of at most
`max_tokens` padded tokens and shuffles the batches. Every rank builds the same plan and takes its
own micro-batches, so all ranks know the step's global target-token count without communicating.
The state (chunk, cursors at its start, p) is all a resume needs to rebuild the same batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from pipeline.core.permutation import KeyedPermutation
from pipeline.core.rng import rng_for
from pipeline.data.store import TokenSplit, pair_sizes, size_stats
from pipeline.data.tokenizer import BOS_ID, EOS_ID, PAD_ID

_PERM, _SHUFFLE, _TIE = 0x5045, 0x5348, 0x5449


class DirectionSampler(Protocol):
    """What the stream needs of a sampler (`pipeline.balance.base.Sampler` is one): the mix at a
    stage step, draws from it with a generator reseeded per chunk, and its state for a resume."""

    def probabilities(self, step: int) -> np.ndarray: ...

    def reseed(self, *keys: int) -> None: ...

    def draw(self, n: int, p: np.ndarray | None = None) -> np.ndarray: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Batch:
    src: torch.Tensor  # [B, S] tag + tokens + eos, right-padded
    tgt_in: torch.Tensor  # [B, T] bos + tokens
    tgt_out: torch.Tensor  # [B, T] tokens + eos
    direction: torch.Tensor  # [B] index into the corpus's direction list
    tgt_tokens: int


@dataclass
class StepBatches:
    micro: list[Batch]  # this rank's micro-batches for one optimizer step (grad_accum of them)
    global_tgt_tokens: int  # over every rank's micro-batches of the step: the loss normaliser
    dir_tokens: dict[int, int]  # the same, per direction id (for per-direction loss weights)


def collate(
    pairs: Sequence[tuple[int, int]], splits: Sequence[TokenSplit], tags: Sequence[int], dir_ids: Sequence[int]
) -> Batch:
    """pairs: (stage direction index, example index). Builds padded LongTensors in one pass."""
    srcs = [splits[d].src_ids(i) for d, i in pairs]
    tgts = [splits[d].tgt_ids(i) for d, i in pairs]
    b = len(pairs)
    s_len = max(len(s) for s in srcs) + 2
    t_len = max(len(t) for t in tgts) + 1
    src = np.full((b, s_len), PAD_ID, dtype=np.int64)
    tin = np.full((b, t_len), PAD_ID, dtype=np.int64)
    tout = np.full((b, t_len), PAD_ID, dtype=np.int64)
    for row, ((d, _), s, t) in enumerate(zip(pairs, srcs, tgts)):
        src[row, 0] = tags[d]
        src[row, 1 : len(s) + 1] = s
        src[row, len(s) + 1] = EOS_ID
        tin[row, 0] = BOS_ID
        tin[row, 1 : len(t) + 1] = t
        tout[row, : len(t)] = t
        tout[row, len(t)] = EOS_ID
    direction = torch.tensor([dir_ids[d] for d, _ in pairs], dtype=torch.long)
    ntok = int(sum(len(t) + 1 for t in tgts))
    return Batch(torch.from_numpy(src), torch.from_numpy(tin), torch.from_numpy(tout), direction, ntok)


def pack(sizes: np.ndarray, order: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Greedy packing of examples taken in `order` (ascending size): padded tokens <= max_tokens."""
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        end = start + 1
        while end < n and (end - start + 1) * sizes[order[end]] <= max_tokens:
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


class BatchStream:
    def __init__(
        self,
        splits: Sequence[TokenSplit],
        dir_ids: Sequence[int],
        tags: Sequence[int],
        sampler: DirectionSampler,
        *,
        seed: int,
        stage: int,
        max_tokens: int,
        chunk_steps: int,
        world: int = 1,
        rank: int = 0,
        accum: int = 1,
        period: int | None = None,
    ) -> None:
        self.splits, self.dir_ids, self.tags = list(splits), list(dir_ids), list(tags)
        self.sampler = sampler
        self.seed, self.stage = seed, stage
        self.max_tokens, self.chunk_steps = max_tokens, chunk_steps
        self.period = period
        # chunks per period: a period of P steps is cut into ceil(P / chunk_steps) chunks
        self._per_period = 0 if period is None else -(-period // chunk_steps)
        self.world, self.rank, self.accum = world, rank, accum
        # per direction (largest, mean) padded size, read from the memory-mapped offsets in slices
        self.stats = [size_stats(s) for s in self.splits]
        too_big = [big for big, _ in self.stats if big > max_tokens]
        if too_big:
            raise ValueError(f"max_tokens {max_tokens} is smaller than an example of {max(too_big)} tokens; "
                             "raise train.max_tokens or lower data.max_len")
        self.chunk = -1
        self.cursors = np.zeros(len(self.splits), dtype=np.int64)  # consumed before the current chunk
        self.next_cursors = self.cursors.copy()
        self.p: np.ndarray | None = None
        self._plan: list[list[tuple[int, int]]] = []
        self._perms: dict[tuple[int, int], KeyedPermutation] = {}

    # -- the plan of one chunk -------------------------------------------------------------
    def _perm(self, d: int, epoch: int) -> KeyedPermutation:
        key = (d, epoch)
        if key not in self._perms:
            if len(self._perms) > 4 * len(self.splits):
                self._perms.clear()
            self._perms[key] = KeyedPermutation(len(self.splits[d]),
                                                rng_for(self.seed, self.stage, self.dir_ids[d], epoch, _PERM))
        return self._perms[key]

    def _examples(self, dirs: np.ndarray, cursors: np.ndarray) -> np.ndarray:
        ex = np.empty(len(dirs), dtype=np.int64)
        for d in range(len(self.splits)):
            where = np.flatnonzero(dirs == d)
            if not len(where):
                continue
            n = len(self.splits[d])
            ks = cursors[d] + np.arange(len(where))
            epochs = ks // n
            for e in np.unique(epochs):
                sel = epochs == e
                ex[where[sel]] = self._perm(d, int(e))[ks[sel] % n]
        return ex

    def chunk_of(self, step: int) -> int:
        if self.period is None:
            return step // self.chunk_steps
        return (step // self.period) * self._per_period + (step % self.period) // self.chunk_steps

    def span(self, chunk: int) -> tuple[int, int]:
        """(first step, number of steps) of a chunk."""
        if self.period is None:
            return chunk * self.chunk_steps, self.chunk_steps
        whole, sub = divmod(chunk, self._per_period)
        first = sub * self.chunk_steps
        return whole * self.period + first, min(self.chunk_steps, self.period - first)

    def _build(self, chunk: int, p: np.ndarray, cursors: np.ndarray) -> tuple[list[list[tuple[int, int]]], np.ndarray]:
        need = self.span(chunk)[1] * self.world * self.accum
        mean = float(sum(pi * m for pi, (_, m) in zip(p, self.stats)))
        n = max(need, int(need * self.max_tokens / mean * 0.9))
        best: tuple[list[np.ndarray], np.ndarray, np.ndarray] | None = None
        for _ in range(8):
            self.sampler.reseed(self.seed, self.stage, chunk)
            dirs = self.sampler.draw(n, p)
            ex = self._examples(dirs, cursors)
            sizes = np.empty(n, dtype=np.int64)
            for d in np.unique(dirs):
                sel = dirs == d
                sizes[sel] = pair_sizes(self.splits[d], ex[sel])
            tie = rng_for(self.seed, self.stage, chunk, _TIE).random(n)
            order = np.lexsort((tie, sizes))
            batches = pack(sizes, order, self.max_tokens)
            if len(batches) >= need:
                best = (batches, dirs, ex)
                if len(batches) <= need + max(1, need // 50):
                    break
                n = max(need, int(n * (need + 0.5) / len(batches)))
            else:
                n = int(n * (need + 0.5) / len(batches)) + 1
        assert best is not None, "could not fill a chunk; is max_tokens far too small?"
        batches, dirs, ex = best
        shuffle = rng_for(self.seed, self.stage, chunk, _SHUFFLE).permutation(len(batches))[:need]
        plan = [[(int(dirs[i]), int(ex[i])) for i in batches[j]] for j in shuffle]
        used = np.zeros(len(self.splits), dtype=np.int64)
        np.add.at(used, dirs, 1)
        return plan, cursors + used

    def _ensure(self, step: int) -> None:
        chunk = self.chunk_of(step)
        if chunk == self.chunk:
            return
        if chunk != self.chunk + 1 and self.chunk >= 0:
            raise RuntimeError(f"batch stream at chunk {self.chunk} was asked for step {step} (chunk {chunk})")
        self.cursors = self.next_cursors.copy()
        self.p = np.asarray(self.sampler.probabilities(step), dtype=np.float64)
        self.chunk = chunk
        self._plan, self.next_cursors = self._build(chunk, self.p, self.cursors)

    # -- public ------------------------------------------------------------------------------
    def step_batches(self, step: int) -> StepBatches:
        """This rank's micro-batches for stage-local `step` (steps must be asked for in order)."""
        self._ensure(step)
        per_step = self.world * self.accum
        base = (step - self.span(self.chunk)[0]) * per_step
        glob = self._plan[base : base + per_step]
        dir_tokens: dict[int, int] = {}
        for mb in glob:
            for d, i in mb:
                dir_tokens[self.dir_ids[d]] = dir_tokens.get(self.dir_ids[d], 0) + int(
                    self.splits[d].tgt_off[i + 1] - self.splits[d].tgt_off[i]) + 1
        mine = [glob[a * self.world + self.rank] for a in range(self.accum)]
        return StepBatches([collate(mb, self.splits, self.tags, self.dir_ids) for mb in mine],
                           sum(dir_tokens.values()), dir_tokens)

    def state_dict(self) -> dict[str, Any]:
        return {
            "chunk": self.chunk,
            "cursors": self.cursors.tolist(),
            "p": None if self.p is None else self.p.tolist(),
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.chunk = int(state["chunk"])
        self.cursors = np.asarray(state["cursors"], dtype=np.int64)
        self.p = None if state["p"] is None else np.asarray(state["p"], dtype=np.float64)
        if self.chunk >= 0 and self.p is not None:
            self._plan, self.next_cursors = self._build(self.chunk, self.p, self.cursors)
        else:
            self.next_cursors = self.cursors.copy()
