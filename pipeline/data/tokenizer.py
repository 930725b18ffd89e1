"""One joint SentencePiece model for every language, with target-language tags as single pieces."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from pipeline.config import TokenizerConfig
from pipeline.core.mixing import temperature_probs
from pipeline.core.typed_yaml import ConfigError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def model_digest(path: Path) -> str:
    """The model file's content hash: token caches are keyed by it, and two runs tokenise alike iff
    their digests are equal."""
    return hashlib.blake2b(path.read_bytes(), digest_size=12).hexdigest()


def tag(lang: str) -> str:
    return f"<2{lang}>"


class Tokenizer:
    def __init__(self, model_path: str | Path) -> None:
        self.path = Path(model_path)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID
        self._tags: dict[str, int] = {}
        for i in range(self.sp.get_piece_size()):
            piece = self.sp.id_to_piece(i)
            if piece.startswith("<2") and piece.endswith(">") and self.sp.is_control(i) is False:
                self._tags[piece[2:-1]] = i

    @property
    def vocab_size(self) -> int:
        return int(self.sp.get_piece_size())

    @property
    def languages(self) -> list[str]:
        return sorted(self._tags)

    def tag_id(self, lang: str) -> int:
        if lang not in self._tags:
            raise KeyError(f"no tag for language {lang!r}; the tokenizer knows {', '.join(self.languages)}")
        return self._tags[lang]

    def encode(self, texts: Sequence[str], threads: int = 0) -> list[list[int]]:
        return self.sp.encode(list(texts), num_threads=threads or -1)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids if i not in (PAD_ID, BOS_ID, EOS_ID)])

    def decode_batch(self, batch: Iterable[Sequence[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def normalize(self, text: str) -> str:
        """The text as the tokenizer sees it (SentencePiece's documented NFKC-based normalisation)."""
        return self.sp.decode(self.sp.encode(text))


def sample_training_text(
    texts_by_lang: dict[str, Sequence[str]], temperature: float, max_sentences: int, seed: int
) -> list[str]:
    """Mix languages p ∝ D^(1/τ) so small languages still get their own pieces.

    Small languages are drawn with replacement: repetition is how their frequency rises in
    SentencePiece's counts, which is the point of the temperature.
    """
    langs = sorted(lang for lang, t in texts_by_lang.items() if len(t))
    sizes = [len(texts_by_lang[lang]) for lang in langs]
    total = min(max_sentences, sum(sizes))
    p = temperature_probs(sizes, temperature)
    rng = np.random.Generator(np.random.PCG64(seed))
    counts = rng.multinomial(total, p)
    out: list[str] = []
    for lang, n in zip(langs, counts):
        pool = texts_by_lang[lang]
        replace = n > len(pool)
        idx = rng.choice(len(pool), size=int(n), replace=replace)
        out.extend(pool[i] for i in np.sort(idx))
    return out


def train_tokenizer(
    texts_by_lang: dict[str, Sequence[str]], languages: Sequence[str], cfg: TokenizerConfig, out_path: Path,
    threads: int = 2,
) -> Tokenizer:
    """Train the joint model into `out_path` (the .model file) on a τ-weighted sample of
    `texts_by_lang` and return it."""
    sentences = sample_training_text(texts_by_lang, cfg.temperature, cfg.max_sentences, cfg.seed)
    return train_on(sentences, languages, cfg, out_path, threads)


def train_on(sentences: list[str], languages: Sequence[str], cfg: TokenizerConfig, out_path: Path,
             threads: int = 2) -> Tokenizer:
    """Train the joint model into `out_path` on exactly these sentences (empty ones skipped)."""
    sentences = [s for s in sentences if s]
    if not sentences:
        raise ValueError("no training text for the tokenizer")
    model = io.BytesIO()
    spm.set_random_generator_seed(cfg.seed)
    try:
        _train(sentences, model, languages, cfg, threads)
    except RuntimeError as exc:
        # SentencePiece's own message says which limit was hit; say which recipe key sets it.
        raise ConfigError([f"tokenizer.vocab_size: {cfg.vocab_size} does not fit this corpus "
                           f"(byte fallback alone needs 256 pieces): {exc}"]) from exc
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(f".tmp{os.getpid()}")  # concurrent runs may train the same tokenizer
    tmp.write_bytes(model.getvalue())
    tmp.replace(out_path)
    return Tokenizer(out_path)


def _train(sentences: list[str], model: io.BytesIO, languages: Sequence[str], cfg: TokenizerConfig,
           threads: int) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=cfg.vocab_size,
        model_type=cfg.model_type,
        character_coverage=cfg.character_coverage,
        byte_fallback=cfg.byte_fallback,
        user_defined_symbols=[tag(lang) for lang in languages],
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        # Small corpora cannot always fill the vocabulary: take what exists instead of failing.
        hard_vocab_limit=False,
        max_sentence_length=1 << 15,
        num_threads=max(1, threads),
        minloglevel=2,
    )
