"""When a resume is refused: the checkpoint was written by another world size, from other data, or
with another recipe, and `--allow-change` did not let that through. Also the config-tree diff the
refusals and the allowed-change records are written from."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pipeline.core.typed_yaml import to_plain
from pipeline.curriculum.recipe import recipe_from_plain

CHANGES = ("world", "corpus", "recipe")  # what `--allow-change` may let through on resume


class ResumeRefused(RuntimeError):
    pass


def diff_items(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(key path, old, new) wherever two plain config trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(set(a) | set(b)):
            sub = f"{path}.{k}" if path else str(k)
            out += diff_items(a.get(k), b.get(k), sub) if k in a and k in b else [(sub, a.get(k), b.get(k))]
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff_items(x, y, f"{path}[{i}]")]
    return [] if a == b else [(path, a, b)]


def with_defaults(saved: Any) -> Any:
    """A checkpoint's saved recipe as this version reads it: a key added since then, at its
    default, is no change of recipe (else every new key would refuse every older checkpoint).
    A saved recipe this version cannot read is compared as it is."""
    if not isinstance(saved, dict):
        return saved
    try:
        return to_plain(recipe_from_plain(copy.deepcopy(saved)))
    except Exception:
        return saved


def diff_plain(a: Any, b: Any, path: str = "") -> list[str]:
    """Key paths where two plain config trees differ, with both values."""
    return [f"{k}: {old!r} -> {new!r}" for k, old, new in diff_items(a, b, path)]


def corpus_changes(saved: dict[str, dict[str, str]] | None, now: dict[str, dict[str, str]]) -> str:
    """Which direction splits (and files) differ from the checkpoint's, by their fingerprints."""
    if not saved:
        return "files changed (this checkpoint predates per-file fingerprints)"
    out = []
    for key in sorted(set(saved) | set(now)):
        if key not in now:
            out.append(f"{key} is gone (was {saved[key]['files']})")
        elif key not in saved:
            out.append(f"{key} is new ({now[key]['files']})")
        elif saved[key]["fingerprint"] != now[key]["fingerprint"]:
            out.append(f"{key} changed ({now[key]['files']})")
    return "; ".join(out) or "the same files, but their combination differs"


def refusal(path: Path, saved: dict[str, Any], world: int, fingerprint: str, parts: dict[str, dict[str, str]],
            recipe: dict[str, Any], allow: set[str] | frozenset[str]) -> ResumeRefused | None:
    """Why resuming from the checkpoint at `path` (its COMMIT metadata `saved`) with this world size,
    corpus and plain recipe is refused, every reason together; None when it is not."""
    problems = []
    if saved.get("world") != world and "world" not in allow:
        problems.append(f"world size: the checkpoint was written by {saved.get('world')} processes, "
                        f"this run has {world}")
    if saved.get("corpus") != fingerprint and "corpus" not in allow:
        problems.append("corpus: the data's fingerprint differs from the checkpoint's: "
                        + corpus_changes(saved.get("corpus_parts"), parts))
    changed = diff_plain(saved.get("recipe"), recipe)
    if changed and "recipe" not in allow:
        problems.append("recipe: " + "; ".join(changed))
    if not problems:
        return None
    return ResumeRefused(
        f"refusing to resume from {path}:\n  - " + "\n  - ".join(problems)
        + "\nPass --allow-change " + ",".join(sorted({p.split(':')[0].split()[0] for p in problems}))
        + " to resume anyway.")
