"""Reading gettext .mo catalogues (both byte orders) without the gettext module."""

from __future__ import annotations

import os
import struct
from pathlib import Path


def read_mo_raw(source: str | os.PathLike[str] | bytes) -> list[tuple[bytes, bytes]]:
    """Every (msgid, msgstr) of a .mo file, header and plurals included. gettext.GNUTranslations is not used
    because it rejects some Wesnoth catalogues over their Plural-Forms expression."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    order = next((o for o in "<>" if len(data) >= 20 and struct.unpack_from(o + "I", data)[0] == 0x950412DE), "")
    if not order:
        raise ValueError("not a .mo catalogue (bad magic number)")
    _revision, count, originals, translations = struct.unpack_from(order + "4I", data, 4)

    def string(table: int, i: int) -> bytes:
        length, offset = struct.unpack_from(order + "2I", data, table + 8 * i)
        if offset + length > len(data):
            raise ValueError(f"truncated .mo catalogue (entry {i})")
        return data[offset : offset + length]

    try:
        return [(string(originals, i), string(translations, i)) for i in range(count)]
    except struct.error as err:
        raise ValueError(f"truncated .mo catalogue: {err}") from err


def catalogue_entry(msgid: bytes, msgstr: bytes) -> tuple[tuple[str, str] | None, str | None]:
    """((english, translation), None) for a usable entry, else (None, why it is skipped)."""
    if not msgid:
        return None, "header"
    if b"\x00" in msgid:
        return None, "plural"
    if b"\x04" in msgid:
        msgid = msgid.split(b"\x04", 1)[1]
        if not msgid:
            return None, "context_only"
    if not msgstr or msgstr == msgid:
        return None, "untranslated"
    try:
        return (msgid.decode("utf-8"), msgstr.decode("utf-8")), None
    except UnicodeDecodeError:
        return None, "bad_encoding"


def read_mo(source: str | os.PathLike[str] | bytes) -> list[tuple[bytes, bytes]]:
    """The translated singular entries of a .mo file, gettext contexts stripped."""
    entries = read_mo_raw(source)
    return [(k.split(b"\x04", 1)[-1], v) for k, v in entries if catalogue_entry(k, v)[0] is not None]
