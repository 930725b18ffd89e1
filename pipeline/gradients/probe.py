"""Per-direction gradients for the policies that learn from them (MultiDDS-S, curvature_aware).

Every `every` steps (for a policy with `needs_gradients`) the probe takes one train batch and one dev batch per direction
(drawn by a generator keyed on seed, stage and step, so a resume draws the same ones), computes
each batch's gradient with `torch.autograd.grad` on the module (outside DeepSpeed's backward, so
training gradients are untouched), data-parallel: every rank takes its share of the rows and the
flattened gradients are summed with one all-reduce. Dot products are then computed on each rank's
slice of the vectors and summed with a second all-reduce of a small matrix.

ZeRO-3 partitions the parameters themselves, which this probe reads whole: recipes that combine
the two are refused when the stage opens.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from pipeline.balance.base import GradientAlignment, Sampler
from pipeline.core.permutation import KeyedPermutation
from pipeline.core.rng import rng_for
from pipeline.data.batches import Batch, collate
from pipeline.data.store import TokenSplit, pair_sizes
from pipeline.engine.collectives import all_reduce_sum
from pipeline.gradients.host import StepHost

_PROBE = 0x4D44


def _draw(data: TokenSplit, rng: np.random.Generator, budget: int, least: int) -> np.ndarray:
    """Pairs of `data` in a random order until their padded sizes reach `budget` (at least `least`
    of them, so every rank has a graph to differentiate), read block by block from a computed
    permutation: a probe of a 100M-pair direction touches only the pairs it takes."""
    perm, n = KeyedPermutation(len(data), rng), len(data)
    order, total, pos, block = [], 0, 0, 256
    while pos < n and (total < budget or pos < least):
        idx = perm[np.arange(pos, min(n, pos + block))]
        order.append(idx)
        total += int(pair_sizes(data, idx).sum())
        pos, block = pos + len(idx), block * 2
    taken = np.concatenate(order)
    take = min(len(taken), max(least, int(np.searchsorted(np.cumsum(pair_sizes(data, taken)), budget))))
    return taken[:take]


class GradientProbe:
    def __init__(self, trainer: StepHost, probe_tokens: int) -> None:
        self.t = trainer
        self.probe_tokens = probe_tokens
        if trainer.engine.zero_stage == 3:
            raise ValueError("gradient-alignment policies (multidds, curvature_aware) read whole parameters on every rank: "
                             "use ZeRO 0, 1 or 2 (deepspeed.config), not ZeRO-3")
        self.params = [p for p in trainer.engine.module.parameters() if p.requires_grad]
        amp = trainer.recipe.train.precision == "amp_bf16"
        self._autocast = (lambda: torch.autocast(trainer.dist.device.type, dtype=torch.bfloat16)) if amp else nullcontext

    def _batch(self, split: str, names: list[str], step: int, purpose: int, tokens: int | None = None) -> Batch:
        """`tokens` (default `probe_tokens`) target-side tokens of each direction in `names` from
        `split`, drawn for `step` (each direction by its own generator), in one batch whose
        `direction` is the corpus's direction index."""
        t = self.t
        budget = self.probe_tokens if tokens is None else tokens
        ids = [t.names.index(n) for n in names]
        pairs, splits, tags = [], [], []
        for k, name in enumerate(names):
            data = t.corpus.splits[split][name]
            spec = next(d for d in t.corpus.manifest.directions if d.name == name)
            rng = rng_for(t.recipe.seed, t.counters.stage, step, ids[k], purpose, _PROBE)
            pairs += [(k, int(i)) for i in _draw(data, rng, budget, t.dist.world)]
            splits.append(data)
            tags.append(t.corpus.tokenizer.tag_id(spec.tgt))
        return collate(pairs, splits, tags, ids)

    def _local_rows(self, b: Batch) -> Batch | None:
        w, r = self.t.dist.world, self.t.dist.rank
        idx = torch.arange(r, b.src.shape[0], w)
        if not len(idx):
            return None
        return Batch(b.src[idx], b.tgt_in[idx], b.tgt_out[idx], b.direction[idx], int((b.tgt_out[idx] != 0).sum()))

    def _row_nll(self, b: Batch, twice: bool = False) -> tuple[torch.Tensor, Batch]:
        """This rank's rows of `b` and their summed NLL per row (graph kept); `twice`: the graph
        will be differentiated twice (Hessian-vector products)."""
        dev = self.t.dist.device
        mine = self._local_rows(b)
        if mine is None:
            raise ValueError(f"a probe batch of {b.src.shape[0]} rows cannot feed {self.t.dist.world} ranks")
        # On GPU only SDPA's math kernel has a double backward; the fused ones are faster otherwise.
        with self._autocast(), (sdpa_kernel(SDPBackend.MATH) if twice else nullcontext()):
            _, nll = self.t.engine.module(mine.src.to(dev), mine.tgt_in.to(dev), mine.tgt_out.to(dev))
        return nll.sum(1), mine

    def loss(self, b: Batch) -> tuple[torch.Tensor, int]:
        """This rank's summed NLL on its rows of `b` (graph kept), and the batch's total tokens."""
        return self._row_nll(b)[0].sum(), b.tgt_tokens

    def flat_grad(self, b: Batch, create_graph: bool = False) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """The batch's mean-token gradient, averaged over ranks, as one float32 vector (and, with
        `create_graph`, the per-parameter gradients still attached to the graph)."""
        total, ntok = self.loss(b)
        grads = list(torch.autograd.grad(total / ntok, self.params, create_graph=create_graph))
        flat = torch.cat([g.detach().float().reshape(-1) for g in grads])
        return all_reduce_sum(flat), (grads if create_graph else None)

    def _slice(self, v: torch.Tensor) -> torch.Tensor:
        w, r = self.t.dist.world, self.t.dist.rank
        n = v.numel()
        return v[r * n // w : (r + 1) * n // w]

    def gram(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> np.ndarray:
        """[len(a), len(b)] dot products, each rank on its slice, summed with one all-reduce."""
        sa = torch.stack([self._slice(x) for x in a]).double()
        sb = torch.stack([self._slice(x) for x in b]).double()
        return all_reduce_sum(sa @ sb.T).cpu().numpy()

    def gradients(self, step: int, names: list[str], dev_names: list[str]) -> dict[str, Any]:
        train = [self.flat_grad(self._batch("train", [n], step, 1))[0] for n in names]
        dev = [self.flat_grad(self._batch("dev", [n], step, 2))[0] for n in dev_names]
        return {"train": train, "dev": dev}

    def for_policy(self, policy: Sampler, step: int, train_names: list[str]) -> GradientAlignment:
        """What `policy.observe_alignment` reads, in eval mode (no dropout, no random numbers drawn):
        the cosines and, for a policy that `wants_curvature`, the dev alignment of the unit train
        gradients and their curvature matrix K."""
        t = self.t
        t.engine.train(False)
        # the dev side is the trained directions: an eval-only one steering sampling would not be zero-shot
        dev_names = t.corpus.manifest.trained
        info, train_grads, dev_grads = self.cosines(step, train_names, dev_names)
        if policy.wants_curvature:
            dev_mean = torch.stack(dev_grads).mean(0)
            units = [g / g.norm().clamp_min(1e-30) for g in train_grads]
            info.dev_alignment = self.gram(units, [dev_mean])[:, 0]
            info.curvature = self.curvature(step, dev_names, train_grads, policy.curvature_tokens)
        t.engine.train(True)
        return info

    def cosines(self, step: int, names: list[str], dev_names: list[str]
                ) -> tuple[GradientAlignment, list[torch.Tensor], list[torch.Tensor]]:
        """cos[i, j] between train gradient i and dev gradient j, and the raw dot products; with the
        flat train and dev gradients they came from."""
        g = self.gradients(step, names, dev_names)
        dots = self.gram(g["train"], g["dev"])
        tn = np.sqrt(np.maximum(np.diag(self.gram(g["train"], g["train"])), 1e-30))
        dn = np.sqrt(np.maximum(np.diag(self.gram(g["dev"], g["dev"])), 1e-30))
        return GradientAlignment(dots / tn[:, None] / dn[None, :], dots, tn, dn), g["train"], g["dev"]

    def curvature(self, step: int, dev_names: list[str], directions: list[torch.Tensor], tokens: int) -> np.ndarray:
        """K[i, j] = v_iᵀ H v_j for unit vectors v along `directions`, H the Hessian of the mean dev
        loss over `dev_names` on `tokens` dev tokens in all (an equal share each), by double
        backpropagation (exact Hessian-vector products)."""
        units = [d / d.norm().clamp_min(1e-30) for d in directions]
        # All directions in one forward: T-times larger matrix products than a pass per direction.
        b = self._batch("dev", dev_names, step, 3, max(1, tokens // len(dev_names)))
        row_nll, mine = self._row_nll(b, twice=True)
        # each direction's mean token loss (its tokens over all ranks' rows), then their mean
        per_direction = torch.zeros(len(self.t.names), dtype=torch.float64)
        per_direction.index_add_(0, b.direction, (b.tgt_out != 0).sum(1).double())
        weight = 1.0 / (len(dev_names) * per_direction[mine.direction])
        total = (row_nll * weight.to(row_nll.device, row_nll.dtype)).sum()
        # each rank's rows contribute their share of the mean loss: the HVPs add up over ranks
        hv = [all_reduce_sum(x) for x in hessian_vector_products(total, self.params, units)]
        return self.gram(units, hv)


def hessian_vector_products(loss: torch.Tensor, params: list[torch.Tensor], vectors: list[torch.Tensor]) -> list[torch.Tensor]:
    """H v for each flat vector v, H the Hessian of `loss` in `params`, as flat float32 vectors.

    One backward with `create_graph`, then one backward of its graph per vector: each costs about
    two forward-backward passes of the loss (reverse over reverse), and on the 2-core CPU its matrix
    products run near the machine's matmul peak, so fewer tokens, not faster kernels, make it cheaper.
    """
    grads = torch.autograd.grad(loss, params, create_graph=True)
    sizes = [p.numel() for p in params]
    out = []
    for k, v in enumerate(vectors):
        vs = [c.view_as(p).to(p.dtype) for c, p in zip(torch.split(v, sizes), params)]
        hv = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=k < len(vectors) - 1)
        out.append(torch.cat([h.detach().float().reshape(-1) for h in hv]))
    return out
