"""Greedy and beam search over `Seq2SeqTransformer`'s KV cache; finished sentences leave the batch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from pipeline.model.transformer import Seq2SeqTransformer

NEG_INF = float("-inf")


def top_k(x: Tensor, k: int, block: int = 64) -> tuple[Tensor, Tensor]:
    """`x.topk(k, dim=1)` (values, indices), in two passes over blocks of `block` columns.

    The k largest entries lie in the k blocks with the largest maxima, so a fast per-block max
    (vectorised, where CPU `topk` and `argmax` walk elements one by one) narrows the search to
    k * block columns: 3× faster for a beam's 4 × 8,000 candidates. Ties at equal values may pick
    different indices than `topk`.
    """
    rows, n = x.shape
    if n % block or n // block <= k:
        return x.topk(k, dim=1)
    blocks = x.view(rows, n // block, block)
    chosen = blocks.amax(2).topk(k, dim=1).indices
    cand = blocks.gather(1, chosen[:, :, None].expand(-1, -1, block)).view(rows, k * block)
    values, pos = cand.topk(k, dim=1)
    return values, chosen.gather(1, pos.div(block, rounding_mode="floor")) * block + pos.remainder(block)


def max_lengths(src_lengths: Tensor, a: float, b: int, cap: int) -> Tensor:
    """min(cap, floor(a * len + b)) per sentence, never below 0."""
    # float64, so that e.g. 0.7 * 10 floors to 7 as it does in Python, not to 6 as in float32.
    n = torch.floor(src_lengths.to(torch.float64) * a).long() + b
    return n.clamp(0, cap)


@contextmanager
def _inference(model: Seq2SeqTransformer) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _limits(model: Seq2SeqTransformer, max_len: Tensor | int, n: int) -> list[int]:
    # The step that forces eos feeds position `limit`, which must exist in the position table.
    cap = model.arch.max_positions - 1
    if isinstance(max_len, int):
        return [max(0, min(cap, max_len))] * n
    values = max_len.tolist()
    if len(values) != n:
        raise ValueError(f"max_len has {len(values)} entries for {n} sentences")
    return [max(0, min(cap, int(v))) for v in values]


def _banned(model: Seq2SeqTransformer, bos_id: int, eos_id: int, device: torch.device) -> Tensor:
    # Tokens a hypothesis may never contain; bos is allowed only where it doubles as eos.
    ids = sorted({model.pad_id, bos_id} - {eos_id})
    return torch.tensor(ids, dtype=torch.long, device=device)


def greedy_search(
    model: Seq2SeqTransformer, src: Tensor, bos_id: int, eos_id: int, max_len: Tensor | int, min_len: int = 0
) -> list[list[int]]:
    """The argmax continuation per sentence, at most `max_len` tokens (and, unless the limit is
    lower, at least `min_len`), without bos and eos."""
    with _inference(model):
        limits = _limits(model, max_len, src.shape[0])
        out: list[list[int]] = [[] for _ in limits]
        active = [i for i, lim in enumerate(limits) if lim > 0]
        if not active:
            return out
        device = src.device
        if len(active) < len(limits):
            src = src.index_select(0, torch.tensor(active, device=device))
        cache = model.init_cache(model.encode(src), max(limits[i] for i in active))
        banned = _banned(model, bos_id, eos_id, device)
        tokens = torch.full((len(active),), bos_id, dtype=torch.long, device=device)
        step = 0
        while active:
            lprobs = model.decode_step(tokens, cache).index_fill_(1, banned, NEG_INF)
            if step < min_len:
                lprobs[:, eos_id] = NEG_INF
            step += 1
            tokens = top_k(lprobs, 1)[1].squeeze(1)
            keep: list[int] = []
            for row, (sent, tok) in enumerate(zip(active, tokens.tolist())):
                if tok == eos_id:
                    continue
                out[sent].append(tok)
                # At the limit eos would be forced: the sentence is done without running that step.
                if len(out[sent]) < limits[sent]:
                    keep.append(row)
            if len(keep) < len(active):
                active = [active[r] for r in keep]
                if keep:
                    index = torch.tensor(keep, device=device)
                    model.reorder(cache, sentences=index)
                    tokens = tokens.index_select(0, index)
        return out


def beam_search(
    model: Seq2SeqTransformer,
    src: Tensor,
    bos_id: int,
    eos_id: int,
    beam: int,
    length_penalty: float,
    max_len: Tensor | int,
    min_len: int = 0,
) -> list[list[int]]:
    """The best finished hypothesis per sentence by sum log-prob / len**length_penalty, with at
    least `min_len` tokens unless its length limit is lower.

    `len` counts eos. Only eos candidates among a sentence's top `beam` expansions are finished
    (fairseq); the top `beam` non-eos candidates stay live. A sentence stops once it has `beam`
    finished hypotheses and its best live one, normalised at the current length, cannot beat the
    best finished one, or at its length limit, where eos is forced.
    """
    if beam < 1:
        raise ValueError("beam must be >= 1")
    with _inference(model):
        limits = _limits(model, max_len, src.shape[0])
        out: list[list[int]] = [[] for _ in limits]
        sents = [i for i, lim in enumerate(limits) if lim > 0]
        if not sents:
            return out
        device = src.device
        if len(sents) < len(limits):
            src = src.index_select(0, torch.tensor(sents, device=device))
        longest = max(limits[i] for i in sents)
        cache = model.init_cache(model.encode(src), longest + 1, beam)
        banned = _banned(model, bos_id, eos_id, device)
        not_eos = torch.ones(model.vocab_size, dtype=torch.bool, device=device)
        not_eos[eos_id] = False
        n = len(sents)
        row_limit = torch.tensor([limits[i] for i in sents], device=device).repeat_interleave(beam)
        # All beams start identical: only beam 0 may expand at the first step.
        scores = torch.full((n, beam), NEG_INF, device=device)
        scores[:, 0] = 0.0
        scores = scores.view(-1)
        tokens = torch.full((n * beam,), bos_id, dtype=torch.long, device=device)
        history = torch.zeros((n * beam, longest + 1), dtype=torch.long)  # on the host, see below
        best: list[tuple[float, list[int]] | None] = [None] * n
        finished = [0] * n
        for step in range(longest + 1):
            lprobs = model.decode_step(tokens, cache).index_fill_(1, banned, NEG_INF)
            if step < min_len:
                lprobs[:, eos_id].masked_fill_(row_limit.gt(step), NEG_INF)
            if step >= min(limits[s] for s in sents):
                lprobs.masked_fill_(row_limit.le(step)[:, None] & not_eos, NEG_INF)
            vocab = lprobs.shape[1]
            cand, flat = top_k(lprobs.add_(scores[:, None]).view(n, beam * vocab), 2 * beam)
            cand_beam, cand_tok = flat.div(vocab, rounding_mode="floor"), flat.remainder(vocab)
            is_eos = cand_tok.eq(eos_id)
            done_raw = cand[:, :beam].masked_fill(~is_eos[:, :beam], NEG_INF)
            live, pos = cand.masked_fill(is_eos, NEG_INF).topk(beam, dim=1)
            live_beam, live_tok = cand_beam.gather(1, pos), cand_tok.gather(1, pos)
            # One device-to-host copy per step (ids are exact in float64); the bookkeeping is Python.
            host = torch.cat([done_raw, cand_beam[:, :beam], live_beam, live_tok, live[:, :1]], 1)
            host = host.to("cpu", torch.float64)
            norm = (step + 1) ** length_penalty
            keep: list[int] = []
            for i, (sent, row) in enumerate(zip(sents, host.tolist())):
                for j in range(beam):
                    if row[j] == NEG_INF:
                        continue
                    finished[i] += 1
                    entry = best[i]
                    if entry is None or row[j] / norm > entry[0]:
                        best[i] = (row[j] / norm, history[i * beam + int(row[beam + j]), :step].tolist())
                entry = best[i]
                beaten = entry is not None and finished[i] >= beam and row[4 * beam] / norm <= entry[0]
                if step >= limits[sent] or beaten:
                    out[sent] = entry[1] if entry is not None else []
                else:
                    keep.append(i)
            if not keep:
                break
            # The host-side history follows the back pointers, then takes this step's tokens.
            back = host[:, 2 * beam : 3 * beam].long() + torch.arange(n)[:, None] * beam
            history = history.index_select(0, back.view(-1))
            history[:, step] = host[:, 3 * beam : 4 * beam].long().view(-1)
            tokens, scores = live_tok.view(-1), live.view(-1)
            if len(keep) == n:
                model.reorder(cache, live_beam)
                continue
            # Some sentences are done: drop their rows everywhere, merged with this step's reorder.
            k_host = torch.tensor(keep, dtype=torch.long)
            k_dev = k_host.to(device)
            tokens, scores, row_limit = (
                t.view(n, beam).index_select(0, k_dev).view(-1) for t in (tokens, scores, row_limit)
            )
            history = history.view(n, beam, -1).index_select(0, k_host).view(len(keep) * beam, -1)
            sents = [sents[i] for i in keep]
            best = [best[i] for i in keep]
            finished = [finished[i] for i in keep]
            n = len(keep)
            model.reorder(cache, live_beam.index_select(0, k_dev), k_dev)
        return out
