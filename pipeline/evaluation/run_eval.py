"""Evaluate a run directory's checkpoint: load the consolidated weights, decode, score, write."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.checkpoint.weights import load_model
from pipeline.config import RecipeConfig
from pipeline.data.prepare import PreparedCorpus
from pipeline.engine.collectives import Dist
from pipeline.evaluation.evaluate import evaluate
from pipeline.rundir.layout import RunDir


def evaluate_run(run: RunDir, corpus: PreparedCorpus, recipe: RecipeConfig, split: str = "test",
                 tag: str | None = None, device: torch.device | None = None,
                 scorers: Sequence[Callable[..., dict[str, Any]]] = (), dist: Dist | None = None) -> dict[str, Any] | None:
    """With `dist`, every rank calls it and decodes a share; rank 0 gets the table, the others None."""
    device = device or torch.device("cpu")
    model, tag_name = load_model(run, recipe, corpus.tokenizer.vocab_size, corpus.tokenizer.pad_id, tag, device)
    splits = corpus.splits[split]
    directions = [(d.name, d.tgt) for d in corpus.manifest.directions if d.name in splits]
    groups = {d.name: d.group for d in corpus.manifest.directions}
    return evaluate(model, corpus.tokenizer, splits, directions, recipe.eval, device,
                    out_dir=Path(run.eval_dir(tag_name)), split_name=split, meta={"checkpoint": tag_name},
                    groups=groups, eval_only=corpus.manifest.eval_only, scorers=scorers, dist=dist)
