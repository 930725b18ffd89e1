"""How the demo turns Wesnoth's catalogue strings into training pairs: markup and placeholders
removed, multi-line entries cut into aligned segments, and every dropped entry or segment counted
by reason (the counts go into the demo corpus's stats)."""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.data.mo import catalogue_entry, read_mo_raw

MAX_WORDS = 40


# Wesnoth's own disambiguation ("female^Thief", "race+plural^...") lives inside the msgid, not in a gettext context.
_WESNOTH_CONTEXT = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_+]*)?\^")
# Segments with slots are dropped, not filled: any filler would be invented text the translators never saw, and
# the slot syntax ($var|, {MACRO}, %d, @ colour marks, ~word~ emphasis, &icon.png= menu items) is noise to learn.
_PLACEHOLDER = re.compile(
    r"\$(?=[\w{])|%(?:\d+\$)?[-+#0]*\d*(?:\.\d+)?[A-Za-z]|\{[^{}]*\}|(?:^|\n)\s*@|~"
    r"|&[^\s&;=]+\.(?:png|jpe?g|gif|webp)\b"
)
# Help-browser markup: <ref>dst='x' text='shown'</ref>; keep only the text= value (img/jump carry none).
_HELP_TAG = re.compile(r"<(ref|bold|italic|header|format|jump|img|link)>(.*?)</\1>", re.S)
_ATTRIBUTES = re.compile(r"""\s*(?:\w+=(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s'"]+)\s*)+""")
_TEXT_ATTRIBUTE = re.compile(r"""\btext=(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"|([^\s'"]+))""")
_PANGO_TAG = re.compile(
    r"</?(?:span|b|i|s|u|tt|big|small|sub|sup|em|strong|br|p|ref|bold|italic|header|format|jump|img|link)\b[^<>]*>",
    re.I,
)
# Whatever tag-like text is left names a slot of a command's syntax (<side>, <nickname>): a placeholder.
_LEFTOVER_TAG = re.compile(r"<[^\W\d_][^<>]*>")
# Translators' slips (Les text='routes'</route>, Έσοδα> 3) that the tag patterns cannot repair.
_BROKEN_MARKUP = re.compile(r"[<>]|\b(?:text|dst|src)='")
_INVISIBLE = re.compile(r"[\x00-\x08\x0e-\x1b\x7f\u200b\ufeff]")


def _help_tag(match: re.Match[str]) -> str:
    inner = match.group(2)
    if not _ATTRIBUTES.fullmatch(inner):
        return inner
    text = _TEXT_ATTRIBUTE.search(inner)
    return re.sub(r"\\(.)", r"\1", next((g for g in text.groups() if g), "")) if text else ""


def _lines(text: str) -> list[str] | str:
    """The non-empty, markup-free, whitespace-collapsed lines of a segment, or why it is dropped."""
    text = _WESNOTH_CONTEXT.sub("", text, count=1)
    if _PLACEHOLDER.search(text):
        return "placeholder"
    text = _PANGO_TAG.sub("", _HELP_TAG.sub(_help_tag, text))
    if _LEFTOVER_TAG.search(text):
        return "placeholder"
    if _BROKEN_MARKUP.search(text):
        return "broken_markup"
    text = _INVISIBLE.sub("", html.unescape(text))
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def _segment_drop(text: str, max_words: int | None = MAX_WORDS) -> str | None:
    if not any(ch.isalpha() for ch in text):
        return "no_letter"
    return "too_long" if max_words is not None and len(text.split()) > max_words else None


def clean_segment(text: str) -> str | None:
    """One side of a pair as a single clean line, or None to drop it (see _PLACEHOLDER for what is dropped)."""
    lines = _lines(text)
    if isinstance(lines, str) or not lines:
        return None
    segment = " ".join(lines)
    return None if _segment_drop(segment) else segment


def clean_pair(english: str, other: str) -> tuple[list[tuple[str, str]], str | None]:
    """The aligned segment pairs of one catalogue entry (several when both sides have as many lines), or the
    reason the whole entry is dropped. Length, letter and identity checks come later, per segment."""
    src, tgt = _lines(english), _lines(other)
    for side in (src, tgt):
        if isinstance(side, str):
            return [], side
    if not src or not tgt:
        return [], "empty"
    if len(src) > 1 and len(src) == len(tgt):
        return list(zip(src, tgt)), None
    if len(src) != len(tgt) and sum(len(line.split()) for line in src) > MAX_WORDS:
        return [], "multiline_mismatch"
    return [(" ".join(src), " ".join(tgt))], None


@dataclass
class LanguageStats:
    entries: int = 0  # every catalogue entry read: entries == sum(entry_drops) + entries_used
    entry_drops: Counter[str] = field(default_factory=Counter)
    entries_used: int = 0
    segments: int = 0  # pairs cut from the used entries: segments == sum(segment_drops) + kept
    segment_drops: Counter[str] = field(default_factory=Counter)
    kept: int = 0


def extract_pairs(catalogues: Iterable[Path], stats: LanguageStats) -> list[tuple[str, str]]:
    """Clean, unique-on-the-English-side pairs of one language; the first translation wins, in the order given."""
    pairs: dict[str, str] = {}
    for path in catalogues:
        for msgid, msgstr in read_mo_raw(path):
            stats.entries += 1
            entry, why = catalogue_entry(msgid, msgstr)
            segments, why = clean_pair(*entry) if entry else ([], why)
            if why:
                stats.entry_drops[why] += 1
                continue
            stats.entries_used += 1
            for src, tgt in segments:
                stats.segments += 1
                why = _segment_drop(src) or _segment_drop(tgt, None) or ("identical" if src == tgt else None)
                why = why or ("duplicate" if src in pairs else None)
                if why:
                    stats.segment_drops[why] += 1
                else:
                    pairs[src] = tgt
    return list(pairs.items())
