"""Evaluate a run directory's checkpoint: load the consolidated weights, decode, score, write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from .config import RecipeConfig
from .data.prepare import PreparedCorpus
from .engine import consolidated_state
from .evaluate import evaluate
from .model import Seq2SeqTransformer
from .rundir import RunDir
from .train import build_model


def load_model(run: RunDir, recipe: RecipeConfig, vocab_size: int, pad_id: int, tag: str | None = None,
               device: torch.device | None = None) -> tuple[Seq2SeqTransformer, str]:
    if tag is None:
        found, notes = ckpt.discover(run.checkpoints)
        if found is None:
            raise FileNotFoundError(f"{run.checkpoints}: no committed checkpoint. {' '.join(notes)}")
        tag_dir, meta = found.path, found.meta
    else:
        tag_dir = run.checkpoints / tag
        meta, why = ckpt.verify(tag_dir)
        if meta is None:
            raise FileNotFoundError(f"{tag_dir}: not a usable checkpoint: {why}")
    model = build_model(recipe, vocab_size, pad_id)
    model.load_state_dict(consolidated_state(tag_dir, int(meta.get("zero_stage", 0))))
    model.to(device or torch.device("cpu")).eval()
    return model, tag_dir.name


def evaluate_run(run: RunDir, corpus: PreparedCorpus, recipe: RecipeConfig, split: str = "test",
                 tag: str | None = None, device: torch.device | None = None) -> dict[str, Any]:
    device = device or torch.device("cpu")
    model, tag_name = load_model(run, recipe, corpus.tokenizer.vocab_size, corpus.tokenizer.pad_id, tag, device)
    splits = corpus.splits[split]
    directions = [(d.name, d.tgt) for d in corpus.manifest.directions if d.name in splits]
    groups = {d.name: d.group for d in corpus.manifest.directions}
    return evaluate(model, corpus.tokenizer, splits, directions, recipe.eval, device,
                    out_dir=Path(run.eval_dir(tag_name)), split_name=split, meta={"checkpoint": tag_name},
                    groups=groups)
