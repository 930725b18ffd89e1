"""`model.activation_checkpointing`: each encoder and decoder layer of the training forward runs under
`torch.utils.checkpoint`, with exactly the results of the plain model, and nowhere else."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.checkpoint import checkpoint as real_checkpoint

import pipeline.model.transformer as transformer
from pipeline.config import ModelConfig, RecipeConfig
from pipeline.core.typed_yaml import ConfigError
from pipeline.curriculum.recipe import load_recipe
from pipeline.model.transformer import Seq2SeqTransformer, build_model

from toy_batches import PAD, VOCAB, batch, teacher_forcing

ENC, DEC = 2, 3  # different, so that the call count tells the two stacks' layers apart


def tiny(on: bool) -> Seq2SeqTransformer:
    """Built through the recipe's builder, from one seed: the same weights with the flag on or off."""
    cfg = ModelConfig(d_model=32, encoder_layers=ENC, decoder_layers=DEC, heads=4, ffn_dim=64, dropout=0.1,
                      attention_dropout=0.1, activation_dropout=0.1, max_positions=64, activation_checkpointing=on)
    torch.manual_seed(0)
    return build_model(RecipeConfig(model=cfg), VOCAB, PAD)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the checkpoint calls of the model module (one item per call), running the real one."""
    seen: list[int] = []

    def counting(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        assert kwargs.get("use_reentrant") is False and kwargs.get("preserve_rng_state", True) is True
        seen.append(1)
        return real_checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(transformer, "checkpoint", counting)
    return seen


def loss_and_grads(model: Seq2SeqTransformer) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    src = batch([7, 3, 5], seed=1)
    tgt_in, tgt_out = teacher_forcing([6, 2, 4], seed=2)
    torch.manual_seed(123)  # the same dropout masks for both models' forwards
    loss, _ = model(src, tgt_in, tgt_out)
    loss.sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert len(grads) == len(list(model.parameters()))
    return loss.detach(), grads


def test_same_loss_and_gradients_with_dropout(calls: list[int]) -> None:
    plain, ckpt = tiny(False), tiny(True)
    assert not plain.activation_checkpointing and ckpt.activation_checkpointing
    for (n, a), (m, b) in zip(plain.state_dict().items(), ckpt.state_dict().items()):
        assert n == m and torch.equal(a, b)
    plain_loss, plain_grads = loss_and_grads(plain)
    assert calls == []
    ckpt_loss, ckpt_grads = loss_and_grads(ckpt)
    assert len(calls) == ENC + DEC  # every layer of both stacks, once each in the forward
    # Exact: the recomputation restores the RNG state (same dropout masks) and replays the same ops
    # in the same order, and the graph outside the layers is unchanged, so no sum is reordered.
    assert torch.equal(plain_loss, ckpt_loss)
    assert plain_grads.keys() == ckpt_grads.keys()
    for name, g in plain_grads.items():
        assert torch.equal(g, ckpt_grads[name]), name
    # Dropout did act (two seeds give two losses), so the equality above covers the masks.
    torch.manual_seed(124)
    src = batch([7, 3, 5], seed=1)
    tgt_in, tgt_out = teacher_forcing([6, 2, 4], seed=2)
    with torch.no_grad():
        assert not torch.equal(plain(src, tgt_in, tgt_out)[0], plain_loss)


def test_not_used_in_eval_or_without_grad(calls: list[int]) -> None:
    model = tiny(True)
    src = batch([5, 4], seed=3)
    tgt_in, tgt_out = teacher_forcing([6, 3], seed=4)
    with torch.no_grad():  # training mode, no gradients
        model(src, tgt_in, tgt_out)
        model.target_logits(src, tgt_in, tgt_out)
    model.eval()
    loss, _ = model(src, tgt_in, tgt_out)  # eval mode, gradients on (the gradient probe's forward)
    loss.sum().backward()
    with torch.no_grad():  # incremental decoding
        cache = model.init_cache(model.encode(src), max_steps=tgt_in.shape[1], beam=1)
        for t in range(tgt_in.shape[1]):
            model.decode_step(tgt_in[:, t], cache)
    model.train()
    with torch.no_grad():
        cache = model.init_cache(model.encode(src), max_steps=2)
        model.decode_step(tgt_in[:, 0], cache)
    assert calls == []


def test_recipe_key(tmp_path: Path) -> None:
    assert ModelConfig().activation_checkpointing is False
    p = tmp_path / "r.yaml"
    p.write_text("name: x\nmodel:\n  activation_checkpointing: true\n")
    assert load_recipe(p).model.activation_checkpointing is True
    assert load_recipe(p, ["model.activation_checkpointing=false"]).model.activation_checkpointing is False
    p.write_text("name: x\nmodel:\n  activation_checkpointing: 1\n")
    with pytest.raises(ConfigError, match="model.activation_checkpointing: expected true or false"):
        load_recipe(p)
