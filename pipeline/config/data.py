"""Data and tokenizer sections of the recipe: where the corpus is, how it is filtered, the
SentencePiece model's settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.config.base import Check, key_path


@dataclass
class DataConfig:
    corpus: str = "demo"  # a manifest path, or "demo" for the embedded Wesnoth corpus
    max_len: int = 128  # subword tokens per side (train pairs above it are dropped and counted)
    max_len_ratio: float = 4.0  # longer side / shorter side, in tokens
    on_invalid: Literal["error", "skip"] = "error"  # invalid UTF-8 lines
    # max_len / max_len_ratio on dev and test too. Off: evaluation sets are scored whole (only the
    # demo filters them, to score what its tiny model trains on).
    filter_eval: bool = False
    allow_eval_drops: bool = False  # let filters drop dev/test pairs (empty, invalid, filtered) instead of failing
    cache_dir: str | None = None  # default: $MMTC_CACHE or ~/.cache/mmtc

    def check(self, path: str) -> Check:
        out: Check = []
        if self.max_len < 2:
            out.append((key_path(path, "max_len"), "must be >= 2"))
        if self.max_len_ratio < 1:
            out.append((key_path(path, "max_len_ratio"), "must be >= 1"))
        return out


@dataclass
class TokenizerConfig:
    vocab_size: int = 8000
    model_type: Literal["unigram", "bpe"] = "unigram"
    temperature: float = 5.0  # languages are mixed p ∝ D^(1/τ) for training the pieces
    # sentences SentencePiece trains on (τ-mixed, drawn from the distinct training sentences): its
    # memory is about 1 GB per million, so 1M keeps preparation under 2 GiB; corpora with fewer
    # distinct sentences (the demo, tatoeba-diverse9) use them all, as before
    max_sentences: int = 1_000_000
    character_coverage: float = 0.9995
    byte_fallback: bool = True
    seed: int = 17

    def check(self, path: str) -> Check:
        out: Check = []
        if self.vocab_size < 64:
            out.append((key_path(path, "vocab_size"), "must be >= 64"))
        if self.temperature <= 0:
            out.append((key_path(path, "temperature"), "must be > 0"))
        if not 0 < self.character_coverage <= 1:
            out.append((key_path(path, "character_coverage"), "must be in (0, 1]"))
        return out
