"""The scores of a direction, each with its sacrebleu signature: BLEU (tokenizer by target
language), chrF, chrF++ (word order 2), TER, and spBLEU where its SentencePiece model is local.

BLEU's tokenizer follows sacrebleu's advice per target language: `ja-mecab` for Japanese,
`zh` for Chinese, `ko-mecab` for Korean, each when its package is installed (`zh` needs none);
`13a` otherwise. The signature names the tokenizer used, so two runs that differ in it are
refused by `mmtc compare` (their signatures differ).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sacrebleu.metrics import BLEU, CHRF, TER

from pipeline.evaluation.langid import OffTarget


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool = True


BLEU_M, CHRF_M, CHRFPP_M, TER_M, SPBLEU_M = (Metric("bleu", "BLEU"), Metric("chrf", "chrF"),
                                             Metric("chrfpp", "chrF++"), Metric("ter", "TER", False),
                                             Metric("spbleu", "spBLEU"))
OFF_TARGET_M = Metric("off_target", "off-tgt%", False)  # langid.py: hypotheses not in the target language
ALWAYS = (BLEU_M, CHRF_M, CHRFPP_M, TER_M, OFF_TARGET_M)
ALL = (BLEU_M, CHRF_M, CHRFPP_M, TER_M, SPBLEU_M, OFF_TARGET_M)
BY_KEY = {m.key: m for m in ALL}
COMET_M = Metric("comet", "COMET")  # only with `mmtc eval --comet`: in its table and JSON, not in reports
SHOWN = (*ALL, COMET_M)

# ISO 639-1 and 639-3 codes (a FLORES suffix such as _Hans is ignored) -> sacrebleu tokenizer.
LANGUAGE_TOKENIZERS = {"ja": "ja-mecab", "jpn": "ja-mecab", "zh": "zh", "zho": "zh", "cmn": "zh",
                       "ko": "ko-mecab", "kor": "ko-mecab"}


def _base(lang: str | None) -> str:
    return (lang or "").replace("-", "_").split("_")[0].lower()


@functools.cache
def _tokenizer_works(name: str) -> bool:
    try:
        BLEU(tokenize=name)
    except (ImportError, ModuleNotFoundError, RuntimeError):
        return False
    return True


def bleu_tokenizer(lang: str | None) -> str:
    """The BLEU tokenizer for a target language: the language's own where it can run, else 13a."""
    name = LANGUAGE_TOKENIZERS.get(_base(lang), "13a")
    if name != "13a" and not _tokenizer_works(name):
        _note(f"BLEU for {lang}: sacrebleu's {name} tokenizer is not installed "
              f"(pip install 'sacrebleu[{name.split('-')[0]}]'); using 13a, as the signature says")
        return "13a"
    return name


def spbleu_model_path() -> str:
    from sacrebleu.utils import SACREBLEU_DIR

    return os.path.join(SACREBLEU_DIR, "models", "flores200sacrebleuspm")


def spbleu_available() -> bool:
    if os.path.isfile(spbleu_model_path()):
        return True
    _note(f"spBLEU skipped: the flores200 SentencePiece model is not at {spbleu_model_path()} "
          "(sacrebleu downloads it; with no network, put it there by hand)")
    return False


@functools.cache
def _note(text: str) -> None:  # once per process and text
    print(f"mmtc: note: {text}", file=sys.stderr)


def sacrebleu_metric(key: str, lang: str | None = None, languages: Sequence[str] = ()) -> Any:
    """The scorer of `key` for target `lang`; off-target identifies among `languages` (the run's)."""
    if key == "off_target":
        return OffTarget(lang or "", languages)
    if key == "bleu":
        return BLEU(tokenize=bleu_tokenizer(lang))
    if key == "chrf":
        return CHRF()
    if key == "chrfpp":
        return CHRF(word_order=2)
    if key == "ter":
        return TER()
    if key == "spbleu":
        return BLEU(tokenize="flores200")
    raise KeyError(f"unknown metric {key!r}; known: {', '.join(BY_KEY)}")


def active_metrics() -> tuple[Metric, ...]:
    return ALL if spbleu_available() else ALWAYS


def score_all(hyps: Sequence[str], refs: Sequence[str], lang: str | None = None,
              metrics: Sequence[Metric] | None = None, languages: Sequence[str] = ()) -> dict[str, Any]:
    """{key: score (2 decimals), key_signature: sacrebleu's signature} for each metric. The
    off-target rate needs the run's `languages` (without them, or for a target the identifier does
    not know, it is left out and `off_target_note` says why); its references' own rate goes beside it."""
    out: dict[str, Any] = {}
    for m in metrics if metrics is not None else active_metrics():
        if m.key == "off_target":
            out.update(_off_target(hyps, refs, lang, languages))
            continue
        metric = sacrebleu_metric(m.key, lang)
        out[m.key] = round(metric.corpus_score(list(hyps), [list(refs)]).score, 2)
        out[f"{m.key}_signature"] = str(metric.get_signature())
    return out


def _off_target(hyps: Sequence[str], refs: Sequence[str], lang: str | None, languages: Sequence[str]) -> dict[str, Any]:
    if not languages:
        return {}
    try:
        metric = OffTarget(lang or "", languages)
    except ValueError as exc:
        _note(f"off-target rate for {lang} skipped: {exc}")
        return {"off_target_note": str(exc)}
    return {"off_target": round(metric.corpus_score(hyps).score, 2),
            "off_target_signature": metric.get_signature(),
            "off_target_ref": round(metric.corpus_score(refs).score, 2)}


class CometScorer:
    """COMET (unbabel-comet) from a local checkpoint: never a download at run time. The system
    score is the mean of the segment scores, as `comet-score` prints it."""

    key = "comet"

    def __init__(self, model_path: str, batch_size: int = 16) -> None:
        try:
            from comet import load_from_checkpoint
        except ImportError as exc:
            raise ValueError(f"--comet needs the unbabel-comet package ({exc}); pip install unbabel-comet") from exc
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"--comet {model_path}: no such checkpoint file (a model's checkpoints/model.ckpt)")
        self.model = load_from_checkpoint(model_path)
        self.path, self.batch_size = model_path, batch_size

    def __call__(self, sources: Sequence[str], hyps: Sequence[str], refs: Sequence[str]) -> dict[str, Any]:
        import comet

        data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hyps, refs)]
        out = self.model.predict(data, batch_size=self.batch_size, gpus=0, progress_bar=False)
        return {"comet": round(float(out.system_score), 4),
                "comet_signature": f"model:{self.path}|version:{getattr(comet, '__version__', '?')}"}
