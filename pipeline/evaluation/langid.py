"""Off-target rate: the share of hypotheses whose detected language is not the target.

The identifier is lingua (`lingua-language-detector`, its n-gram models inside the wheel: nothing
is downloaded). It was chosen over CLD2 (`pycld2`) on our languages' short segments: on the
tatoeba-diverse9 test references (5-7 words) lingua, restricted to the corpus's ten languages,
identifies 87.8% (mar) to 100% of each language, CLD2 15.9% (bos) to 100% (README, "Off-target
rate"). Candidates are the run's languages that lingua knows (its 75 languages), so a Bosnian
segment is told from Bulgarian and Macedonian, not from Croatian and Serbian, which the run never
produces. A target lingua does not know has no off-target rate (the JSON says so). A hypothesis
lingua cannot place (empty, digits only) is counted as on target: off-target is what was
positively identified as another language. The rate of the references themselves is reported
beside it (`off_target_ref`): the identifier's own error on that set.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import numpy as np
from lingua import IsoCode639_1, IsoCode639_3, Language, LanguageDetector, LanguageDetectorBuilder


def lingua_language(code: str) -> Language | None:
    """Our language code (ISO 639-1 or 639-3, a FLORES script suffix ignored) as lingua's."""
    base = code.replace("-", "_").split("_")[0].lower()
    for iso, make in ((IsoCode639_3, Language.from_iso_code_639_3), (IsoCode639_1, Language.from_iso_code_639_1)):
        try:
            return make(iso.from_str(base))
        except ValueError:
            continue
    return None


def identifiable(languages: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the codes lingua knows, those it does not), each sorted."""
    known = sorted(c for c in set(languages) if lingua_language(c) is not None)
    return known, sorted(set(languages) - set(known))


@functools.cache
def _detector(candidates: tuple[str, ...]) -> LanguageDetector:
    langs = [lingua_language(c) for c in candidates]
    return LanguageDetectorBuilder.from_languages(*[x for x in langs if x is not None]).build()


@dataclass
class _Score:
    score: float


class OffTarget:
    """A metric with sacrebleu's interface (`corpus_score`, `get_signature` and the per-sentence
    statistics `mmtc compare`'s paired bootstrap resamples): the percentage of off-target hypotheses."""

    def __init__(self, target: str, languages: Sequence[str]) -> None:
        self.target = target
        self.candidates, _ = identifiable([*languages, target])
        if lingua_language(target) is None:
            raise ValueError(f"lingua cannot identify {target}")
        if len(self.candidates) < 2:
            raise ValueError(f"only {target} is identifiable: off-target needs at least two candidate languages")
        self.want: Language = lingua_language(target)  # type: ignore[assignment]  # checked above

    def detected(self, texts: Sequence[str]) -> list[str | None]:
        """The candidate each text is identified as (None when lingua cannot place it)."""
        found = _detector(tuple(self.candidates)).detect_languages_in_parallel_of(list(texts))
        return [None if x is None else x.iso_code_639_3.name.lower() for x in found]

    def flags(self, hyps: Sequence[str]) -> np.ndarray:
        """1 where a hypothesis is identified as another language than the target, else 0."""
        want = self.want.iso_code_639_3.name.lower()
        return np.array([x is not None and x != want for x in self.detected(hyps)], dtype=np.float32)

    def _extract_corpus_statistics(self, hyps: Sequence[str], refs: Any = None) -> np.ndarray:
        return np.stack([self.flags(hyps), np.ones(len(hyps), dtype=np.float32)], axis=1)

    def _compute_score_from_stats(self, stats: Sequence[float]) -> _Score:
        return _Score(100.0 * float(stats[0]) / max(1.0, float(stats[1])))

    def corpus_score(self, hyps: Sequence[str], refs: Any = None) -> _Score:
        return self._compute_score_from_stats(self._extract_corpus_statistics(hyps).sum(0))

    def get_signature(self) -> str:
        return f"lingua:{version('lingua-language-detector')}|langs:{','.join(self.candidates)}"


def candidates_from_signature(signature: str) -> list[str]:
    """The candidate languages an off-target score was computed against (its signature's langs)."""
    fields = dict(x.split(":", 1) for x in signature.split("|") if ":" in x)
    return fields.get("langs", "").split(",")
