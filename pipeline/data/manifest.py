"""The corpus manifest: which directions exist and where each split's pairs come from.

Directions are listed one by one (`directions:`), generated from languages and a path pattern
(`pairs:`, see `pairs.py`), or both. A direction without training data (`eval_only: true`, or no
`train`) is never sampled and is scored at every evaluation: a zero-shot direction, in the group
`zero-shot` unless it names its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.typed_yaml import ConfigError, bind, load_yaml_file
from pipeline.data.pairs import PairsSpec, expand_pairs
from pipeline.data.spec import ZERO_SHOT, Check, DirectionSpec, SourceSpec

__all__ = ["Check", "DirectionSpec", "Manifest", "SourceSpec", "load_manifest"]

@dataclass
class Manifest:
    directions: list[DirectionSpec] = field(default_factory=list)
    pairs: list[PairsSpec] = field(default_factory=list)
    name: str = "corpus"
    # let an eval-only direction use a language no trained direction has: its text would not be in
    # the tokenizer's training, or, as a target, its <2xx> tag never trained
    allow_untrained_languages: bool = False

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.directions]

    @property
    def trained(self) -> list[str]:
        """The directions with training data, the only ones a stage samples."""
        return [d.name for d in self.directions if d.trains]

    @property
    def training(self) -> list[DirectionSpec]:
        return [d for d in self.directions if d.trains]

    @property
    def eval_only(self) -> list[str]:
        return [d.name for d in self.directions if not d.trains]

    def spec(self, name: str) -> DirectionSpec:
        return self.directions[self.names.index(name)]

    @property
    def languages(self) -> list[str]:
        langs: list[str] = []
        for d in self.directions:
            for lang in (d.src, d.tgt):
                if lang not in langs:
                    langs.append(lang)
        return langs

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for d in self.directions:
            if d.group:
                out.setdefault(d.group, []).append(d.name)
        return out

    def select(self, selectors: list[str], trained: bool = False) -> list[str]:
        """Direction names chosen by `all`, `group:NAME` or direction names, in manifest order.

        `all` is every direction with training data (eval-only ones are named, or chosen by their
        group). With `trained` (what a stage samples) a group gives its trained members and an
        eval-only direction named outright is an error."""
        groups = self.groups()
        chosen: set[str] = set()
        errors = []
        untrained = set(self.eval_only)
        for s in selectors:
            if s == "all":
                chosen.update(self.trained)
            elif s.startswith("group:"):
                g = s.split(":", 1)[1]
                if g not in groups:
                    errors.append(f"unknown group {g!r} (groups: {', '.join(sorted(groups)) or 'none'})")
                members = [n for n in groups.get(g, []) if not (trained and n in untrained)]
                if g in groups and not members:
                    errors.append(f"group {g!r} has no direction with training data ({', '.join(groups[g])} "
                                  "are eval-only)")
                chosen.update(members)
            elif s in self.names:
                if trained and s in untrained:
                    errors.append(f"{s} is eval-only (no training data): a stage cannot sample it")
                chosen.add(s)
            else:
                errors.append(f"unknown direction {s!r} (directions: {', '.join(self.names)})")
        if errors:
            raise ConfigError(errors)
        return [n for n in self.names if n in chosen]


def resolve_paths(manifest: Manifest, base: Path) -> None:
    """Make file paths absolute, relative to the manifest's folder."""
    for d in manifest.directions:
        for spec in (d.train, d.dev, d.test):
            if spec is None or spec.format == "hub":
                continue
            for attr in ("src", "tgt", "path"):
                v = getattr(spec, attr)
                if v is not None and not Path(v).is_absolute() and "://" not in v:
                    setattr(spec, attr, str((base / v).resolve()))


def load_manifest(path: str | Path) -> Manifest:
    """The manifest at `path`, its `pairs:` expanded. Binding errors (types, unknown keys, the explicit
    directions' own checks) are raised first, all together; then everything the files and the whole
    list show (missing files, repeats, coverage), all together, each with its line."""
    data, lines = load_yaml_file(path)
    manifest = bind(Manifest, data, lines)
    base = Path(path).resolve().parent
    resolve_paths(manifest, base)
    origins = [f"directions[{i}]" for i in range(len(manifest.directions))]
    errors: list[str] = []
    for i, entry in enumerate(manifest.pairs):
        made, problems = expand_pairs(entry, f"pairs[{i}]", base)
        errors += [f"{lines.at(k)}: {msg}" for k, msg in problems]
        manifest.directions += [d for d, _ in made]
        origins += [o for _, o in made]
    # a direction that failed to expand would make the coverage checks report its languages as untrained
    errors += [f"{lines.at(k)}: {msg}" for k, msg in final_checks(manifest, origins, coverage=not errors)]
    if errors:
        raise ConfigError(errors, str(path))
    for d, origin in zip(manifest.directions, origins):
        d.origin = origin
        if not d.trains and d.group is None:
            d.group = ZERO_SHOT
    return manifest


def final_checks(manifest: Manifest, origins: list[str], coverage: bool = True) -> Check:
    """What only the whole list can show: repeats (naming both places), an empty corpus, and a
    language of an eval-only direction that no trained direction covers."""
    out: Check = []
    first: dict[str, str] = {}
    for d, origin in zip(manifest.directions, origins):
        if d.name in first:
            out.append((origin.split(" ")[0], f"{d.name} is listed twice: {first[d.name]} and {origin}"))
        else:
            first[d.name] = origin
    if not manifest.directions:
        out.append(("directions", "the manifest has no direction: list some under directions: or pairs:"))
    elif not manifest.trained:
        out.append(("directions", "every direction is eval-only: at least one needs training data"))
    if manifest.allow_untrained_languages or not coverage:
        return out
    text = {lang for d in manifest.directions if d.trains for lang in (d.src, d.tgt)}
    targets = {d.tgt for d in manifest.directions if d.trains}
    for d, origin in zip(manifest.directions, origins):
        if d.trains:
            continue
        key = origin.split(" ")[0]
        if d.src not in text:
            out.append((key, f"{d.name} is eval-only and {d.src} is in no trained direction: the tokenizer "
                             "never sees its text (allow_untrained_languages: true to score it anyway)"))
        if d.tgt not in targets:
            out.append((key, f"{d.name} is eval-only and no trained direction translates into {d.tgt}: its tag "
                             f"<2{d.tgt}> is never trained (allow_untrained_languages: true to score it anyway)"))
    return out
