"""Display strings for tokens: visible whitespace, shortened, unique position labels."""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Sequence

__all__ = ["format_token", "position_labels"]

# Byte-level BPE (GPT-2, Llama-3, SmolLM2) encodes space/newline/tab as these code points;
# SentencePiece (Llama-2, Gemma) marks a leading space with U+2581.
_REPLACEMENTS = {
    "\u0120": "\u2423",  # Ġ  -> ␣ (space)
    "\u2581": "\u2423",  # ▁  -> ␣
    " ": "\u2423",
    "\u010a": "\u21b5",  # Ċ  -> ↵ (newline)
    "\n": "\u21b5",
    "\u0109": "\u21e5",  # ĉ  -> ⇥ (tab)
    "\t": "\u21e5",
    "\u010d": "\\r",  # č  -> \r
    "\r": "\\r",
    # Invisible characters that would leave a cell or tooltip blank: shown as escapes.
    "\u200b": "\\u200b",  # zero-width space
    "\u2060": "\\u2060",  # word joiner
    "\ufeff": "\\ufeff",  # byte order mark / zero-width no-break space
}
#: Shown for the space separators other than " " (no-break, thin, ideographic, ...).
OTHER_SPACE = "\u237d"  # ⍽
_TABLE = str.maketrans(_REPLACEMENTS)
ELLIPSIS = "\u2026"


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's 256 stand-in characters (GPT-2's ``bytes_to_unicode``), to bytes."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def _byte_level_text(raw: str) -> str | None:
    """``raw`` read as a byte-level BPE spelling (``"Ã©"`` -> ``"é"``, ``"âĢľ"`` -> ``"“"``), or
    None when it is not one: a character outside the 256 stand-ins (``▁``, a real space,
    ``“``), bytes that are not whole UTF-8 (a token holding part of a character), or a
    decode to control characters (SentencePiece's Polish ``"są"`` would give ``"s\x05"``)."""
    if raw.isascii():
        return None  # printable ASCII stands for itself; nothing to gain
    alphabet = _byte_level_alphabet()
    try:
        data = bytes(alphabet[c] for c in raw)
    except KeyError:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = _cut_characters(data)
        if text is None:
            return None
    controls = {c for c in text if unicodedata.category(c) == "Cc"}
    if controls - {"\n", "\t"} and not text.isspace():
        return None
    return text


def _cut_characters(data: bytes) -> str | None:
    """UTF-8 text whose first and/or last character is cut off (a span of tokens that starts
    or ends inside a character, e.g. a generated answer), with U+FFFD for each cut piece:
    ``"🦘"`` + half of ``"🇦"`` -> ``"🦘\ufffd"``. None unless what lies between is whole UTF-8
    with a multi-byte character in it: only that shows the bytes are byte-level BPE's (a
    single fragment, or SentencePiece text that happens to use the stand-ins, stays as is)."""
    start = 0
    while start < min(3, len(data)) and 0x80 <= data[start] < 0xC0:
        start += 1  # continuation bytes of a character that began before the span
    end = len(data)
    for back in range(1, min(3, len(data) - start) + 1):
        byte = data[-back]
        if byte < 0x80:
            break
        if byte >= 0xC0:  # a lead byte: is its character complete?
            if back < (2 if byte < 0xE0 else 3 if byte < 0xF0 else 4):
                end = len(data) - back
            break
    if start == 0 and end == len(data):
        return None
    try:
        middle = data[start:end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if middle.isascii():
        return None
    return "\ufffd" * (start > 0) + middle + "\ufffd" * (end < len(data))


def format_token(raw: str, max_len: int = 12) -> str:
    """Make a token readable: whitespace becomes visible symbols, long tokens get an ellipsis.

    Args:
        raw: the token as the tokenizer's vocabulary spells it (e.g. ``"ĠCanberra"``, or
            ``"ĠcafÃ©"`` for " café" in byte-level BPE) or as decoded text (``" Canberra"``).
        max_len: longest result in characters (the ellipsis included); 0 means no limit.
    """
    text = _byte_level_text(raw)
    shown = (raw if text is None else text).translate(_TABLE)
    if not shown.isascii():
        shown = "".join(
            OTHER_SPACE if c != " " and unicodedata.category(c) == "Zs" else c for c in shown
        )
    if shown == "":
        shown = "\u2205"  # ∅: an empty decode must still be visible
    if max_len and len(shown) > max_len:
        shown = shown[: max(1, max_len - 1)] + ELLIPSIS
    return shown


def position_labels(display_tokens: Sequence[str]) -> list[str]:
    """Unique axis labels ``"<position>:<token>"``, so repeated tokens stay separate columns."""
    return [f"{i}:{tok}" for i, tok in enumerate(display_tokens)]
