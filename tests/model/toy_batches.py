"""Random token batches for the model tests: ids 4..VOCAB-1, PAD-padded; targets as teacher forcing."""

from __future__ import annotations

import torch

PAD, BOS, EOS, VOCAB = 1, 2, 3, 50


def batch(lengths: list[int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = torch.full((len(lengths), max(lengths)), PAD)
    for i, n in enumerate(lengths):
        out[i, :n] = torch.randint(4, VOCAB, (n,), generator=g)
    return out


def teacher_forcing(lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    body = batch([n - 1 for n in lengths], seed)
    tgt_in = torch.cat([torch.full((len(lengths), 1), BOS), body], 1)
    tgt_out = torch.cat([body, torch.full((len(lengths), 1), PAD)], 1)
    for i, n in enumerate(lengths):
        tgt_out[i, n - 1] = EOS
    return tgt_in, tgt_out
