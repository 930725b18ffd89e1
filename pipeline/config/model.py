"""The model section and the architecture presets (plain dataclasses: no torch, so the recipe
loader checks divisibility without building a model)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from pipeline.config.base import Check, key_path


@dataclass(frozen=True)
class ModelArch:
    d_model: int
    encoder_layers: int
    decoder_layers: int
    heads: int
    ffn_dim: int
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    label_smoothing: float = 0.1
    max_positions: int = 1024


PRESETS: dict[str, ModelArch] = {
    "tiny": ModelArch(d_model=256, encoder_layers=3, decoder_layers=3, heads=4, ffn_dim=1024),
    "base": ModelArch(d_model=512, encoder_layers=6, decoder_layers=6, heads=8, ffn_dim=2048),
    "big": ModelArch(d_model=1024, encoder_layers=6, decoder_layers=6, heads=16, ffn_dim=4096),
}


def resolve_arch(cfg: ModelConfig) -> ModelArch:
    """The preset, with every field that `cfg` sets (not None) taking precedence."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"unknown model preset {cfg.preset!r}; expected one of {sorted(PRESETS)}")
    base = PRESETS[cfg.preset]
    values = {f.name: getattr(base, f.name) for f in fields(ModelArch)}
    for name in values:
        value = getattr(cfg, name, None)
        if value is not None:
            values[name] = value
    return ModelArch(**values)


@dataclass
class ModelConfig:
    preset: Literal["tiny", "base", "big"] = "tiny"
    d_model: int | None = None
    encoder_layers: int | None = None
    decoder_layers: int | None = None
    heads: int | None = None
    ffn_dim: int | None = None
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    label_smoothing: float = 0.1
    max_positions: int = 1024
    # Recompute each layer's activations in the backward instead of keeping them (training only;
    # the same results): one extra forward per layer for memory, for `big` models or long batches.
    activation_checkpointing: bool = False

    def check(self, path: str) -> Check:
        out: Check = []
        for name in ("dropout", "attention_dropout", "activation_dropout", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                out.append((key_path(path, name), "must be in [0, 1)"))
        arch = resolve_arch(self)
        if arch.d_model % arch.heads:
            out.append((key_path(path, "heads"), f"d_model {arch.d_model} is not divisible by {arch.heads} heads"))
        return out
