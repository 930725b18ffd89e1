"""Decode and score per direction: sacrebleu BLEU and chrF with signatures, dev loss, baselines."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import EvalConfig
from pipeline.data.batches import collate, pack
from pipeline.data.store import TokenSplit
from pipeline.data.tokenizer import Tokenizer
from pipeline.engine.collectives import Dist
from pipeline.evaluation.metrics import BLEU_M, CHRF_M, SHOWN, active_metrics, score_all
from pipeline.model.decode import beam_search, greedy_search, max_lengths


def _length_batches(lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    return pack(lengths, np.argsort(lengths, kind="stable"), budget)


def _my_batches(batches: list[np.ndarray], lengths: np.ndarray, dist: Dist | None) -> list[int]:
    """The batches this rank decodes: the one-rank batches themselves (so each sentence is decoded
    in the same company, hence to the same output), dealt to ranks by padded tokens, longest
    first, each to the least loaded rank (every rank computes the same deal)."""
    if dist is None or dist.world == 1:
        return list(range(len(batches)))
    cost = [len(b) * int(lengths[b].max()) for b in batches]
    load = [0] * dist.world
    mine = []
    for i in sorted(range(len(batches)), key=lambda i: (-cost[i], i)):
        r = min(range(dist.world), key=lambda r: (load[r], r))
        load[r] += cost[i]
        if r == dist.rank:
            mine.append(i)
    return sorted(mine)


def _gather_on_main(part: dict[int, Any], dist: Dist | None) -> dict[int, Any]:
    """Every rank's {index: value} merged on rank 0 (elsewhere: this rank's own)."""
    if dist is None or dist.world == 1:
        return part
    parts: list[Any] | None = [None] * dist.world if dist.is_main else None
    torch.distributed.gather_object(part, parts, dst=0)
    return {k: v for p in parts for k, v in p.items()} if parts is not None else part


def translate_ids(
    model: torch.nn.Module, sources: Sequence[Sequence[int]], tag_id: int, tok: Tokenizer, cfg: EvalConfig,
    device: torch.device, dist: Dist | None = None,
) -> list[list[int]]:
    """Decode token-id sources (without tag/eos) into token-id hypotheses, in input order. With
    `dist`, every rank calls it with the same sources, decodes its share of the batches, and rank 0
    gets them all (the other ranks' lists hold only what they decoded)."""
    lengths = np.array([len(s) + 2 for s in sources], dtype=np.int64)
    hyps: list[list[int]] = [[] for _ in sources]
    budget = max(int(cfg.batch_tokens // max(1, cfg.beam)), int(lengths.max(initial=1)))
    cap = getattr(model, "max_positions", 1024) - 1
    batches = _length_batches(lengths, budget)
    done: dict[int, list[int]] = {}
    for b in _my_batches(batches, lengths, dist):
        idx = batches[b]
        width = int(lengths[idx].max())
        src = torch.full((len(idx), width), tok.pad_id, dtype=torch.long)
        for row, i in enumerate(idx):
            s = sources[i]
            src[row, 0] = tag_id
            src[row, 1 : len(s) + 1] = torch.as_tensor(np.asarray(s, dtype=np.int64))
            src[row, len(s) + 1] = tok.eos_id
        src = src.to(device)
        lim = max_lengths(torch.as_tensor(lengths[idx]), cfg.max_len_a, cfg.max_len_b, cap).to(device)
        if cfg.beam == 1:
            out = greedy_search(model, src, tok.bos_id, tok.eos_id, lim)
        else:
            out = beam_search(model, src, tok.bos_id, tok.eos_id, cfg.beam, cfg.length_penalty, lim)
        for row, i in enumerate(idx):
            done[int(i)] = out[row]
    for i, h in _gather_on_main(done, dist).items():
        hyps[i] = h
    return hyps


@torch.inference_mode()
def dev_loss(
    model: torch.nn.Module, splits: dict[str, TokenSplit], names: Sequence[str], tags: Sequence[int],
    device: torch.device, max_tokens: int = 8000, dist: Dist | None = None,
) -> dict[str, float]:
    """Teacher-forced NLL per target token for each direction (no label smoothing). With `dist`,
    the batches are shared out as in translate_ids and summed on rank 0 in the one-rank order (the
    same float sums); the other ranks' values are partial."""
    was_training = model.training
    model.eval()
    out = {}
    for name, tag_id in zip(names, tags):
        split = splits[name]
        sizes = np.maximum(split.src_lens + 2, split.tgt_lens + 1)
        batches = _length_batches(sizes, max(max_tokens, int(sizes.max())))
        part: dict[int, tuple[float, int]] = {}
        for i in _my_batches(batches, sizes, dist):
            b = collate([(0, int(j)) for j in batches[i]], [split], [tag_id], [0])
            _, nll_tok = model(b.src.to(device), b.tgt_in.to(device), b.tgt_out.to(device))
            part[i] = (float(nll_tok.sum()), b.tgt_tokens)
        sums = _gather_on_main(part, dist)
        nll, ntok = 0.0, 0
        for i in sorted(sums):
            nll += sums[i][0]
            ntok += sums[i][1]
        out[name] = nll / max(1, ntok)
    model.train(was_training)
    return out


def evaluate(
    model: torch.nn.Module, tok: Tokenizer, splits: dict[str, TokenSplit], directions: Sequence[tuple[str, str]],
    cfg: EvalConfig, device: torch.device, out_dir: Path | None = None, split_name: str = "test",
    meta: dict[str, Any] | None = None, groups: dict[str, str | None] | None = None, eval_only: Collection[str] = (),
    scorers: Sequence[Callable[[Sequence[str], Sequence[str], Sequence[str]], dict[str, Any]]] = (),
    dist: Dist | None = None,
) -> dict[str, Any] | None:
    """directions: (name, target language). Returns and (optionally) writes the per-direction table.
    With `dist` every rank calls it: all decode their share, rank 0 scores, writes and returns the
    table, the others return None."""
    results: dict[str, Any] = {"split": split_name, **(meta or {}), "directions": {}}
    t0 = time.time()
    names = [n for n, _ in directions]
    tags = [tok.tag_id(lang) for _, lang in directions]
    losses = dev_loss(model, splits, names, tags, device, dist=dist)
    metrics = active_metrics()
    main = dist is None or dist.is_main
    for (name, lang), tag_id in zip(directions, tags):
        split = splits[name]
        assert split.texts is not None, f"{name} {split_name} has no reference texts"
        n = len(split) if cfg.max_sentences is None else min(len(split), cfg.max_sentences)
        sources = [split.src_ids(i) for i in range(n)]
        srcs, refs = split.texts["src"][:n], split.texts["tgt"][:n]
        hyp_ids = translate_ids(model, sources, tag_id, tok, cfg, device, dist)
        if not main:
            continue
        hyps = tok.decode_batch(hyp_ids)
        # "of": the pairs the split's files hold, so a table can say when it scored only part of them
        of = int((split.meta or {}).get("seen", len(split)))
        entry: dict[str, Any] = {"sentences": n, "of": of, "loss": round(losses[name], 4),
                                 **score_all(hyps, refs, lang, metrics, tok.languages)}
        for scorer in scorers:  # (sources, hypotheses, references) -> more scores, e.g. COMET
            entry.update(scorer(srcs, hyps, refs))
        if cfg.baseline:
            base = score_all(srcs, refs, lang, (BLEU_M, CHRF_M))
            entry["copy_source"] = {"bleu": base["bleu"], "chrf": base["chrf"]}
        results["directions"][name] = entry
        if out_dir is not None:
            (out_dir / split_name).mkdir(parents=True, exist_ok=True)
            (out_dir / split_name / f"{name}.hyp").write_text("".join(h.replace("\n", " ") + "\n" for h in hyps))
    if not main:
        return None
    results["averages"] = averages(results["directions"], groups or {}, eval_only)
    if dist is not None and dist.world > 1:
        results["decoded_by"] = dist.world  # ranks that shared the decoding
    results["seconds"] = round(time.time() - t0, 1)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{split_name}.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    return results


def averages(entries: dict[str, Any], groups: dict[str, str | None],
             eval_only: Collection[str] = ()) -> dict[str, Any]:
    """Mean of each metric over all trained directions (eval-only ones have their own group, e.g.
    zero-shot, and stay out of `all`) and over each group (e.g. hrl, lrl)."""
    sets: dict[str, list[str]] = {"all": [n for n in entries if n not in eval_only]}
    for name in entries:
        g = groups.get(name)
        if g:
            sets.setdefault(g, []).append(name)
    keys = [m.key for m in SHOWN if all(m.key in e for e in entries.values())]
    return {k: {**{m: round(sum(entries[n][m] for n in v) / len(v), 2) for m in keys}, "directions": len(v)}
            for k, v in sets.items() if v}


def format_table(results: dict[str, Any], groups: dict[str, str | None] | None = None) -> str:
    dirs = results["directions"]
    cols = [m for m in SHOWN if dirs and all(m.key in e for e in dirs.values())]
    rows = [f"{results['split']}: scores per direction (copy-the-source BLEU and chrF in brackets; TER: lower is better)",
            f"  {'direction':<12}{'group':<10}" + "".join(f"{m.label:>8}" for m in cols)
            + f"   {'[BLEU':>6}{'chrF]':>7}{'loss':>8}"]
    for name, e in dirs.items():
        base = e.get("copy_source", {})
        g = (groups or {}).get(name) or ""
        rows.append(f"  {name:<12}{g:<10}" + "".join(f"{e[m.key]:>8.1f}" for m in cols)
                    + f"   {base.get('bleu', float('nan')):>6.1f}{base.get('chrf', float('nan')):>7.1f}{e['loss']:>8.3f}")
    for k, a in results.get("averages", {}).items():
        rows.append(f"  {'avg ' + k:<22}" + "".join(f"{a[m.key]:>8.1f}" if m.key in a else f"{'':>8}" for m in cols))
    sigs = sorted({f"{m.label} {e[m.key + '_signature']}" for e in dirs.values() for m in cols
                   if m.key + "_signature" in e})
    note = partial_note(dirs)
    return "\n".join(rows + ([f"  {note}"] if note else []) + [f"  {s}" for s in sigs])


def partial_note(directions: dict[str, Any]) -> str:
    """'scored only part of the set: eng-heb 106 of 1500 (7.1%), ...', or '' when every set is whole."""
    part = [f"{n} {e['sentences']} of {e['of']} ({100 * e['sentences'] / e['of']:.1f}%)"
            for n, e in directions.items() if e.get("of") and e["sentences"] < e["of"]]
    return ("scored only part of the set (filters, eval.max_sentences): " + ", ".join(part)) if part else ""
