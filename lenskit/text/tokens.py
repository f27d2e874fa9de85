"""Display strings for tokens: visible whitespace, shortened, unique position labels."""

from __future__ import annotations

import contextlib
import functools
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "byte_level_vocabulary",
    "format_token",
    "position_labels",
    "token_strings",
    "vocab_strings",
]

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


def byte_level_vocabulary(tokenizer: Any) -> bool | None:
    """Whether the tokenizer is byte-level BPE (GPT-2, Llama-3, SmolLM2), whose vocabulary
    strings spell UTF-8 bytes with stand-in characters: its decoder is ``ByteLevel``. Without a
    readable decoder, whether the vocabulary holds the byte stand-ins and "Ġ"-words. None when
    neither can be read. SentencePiece tokenizers (Llama-2, Gemma) give False."""
    cached = getattr(tokenizer, "_lenskit_byte_level", None)
    if cached is not None:
        return bool(cached)
    found: bool | None = None
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    with contextlib.suppress(Exception):  # a decoder without the JSON state: look further
        found = b'"type":"ByteLevel"' in decoder.__getstate__()
    if found is None:
        try:
            vocab = tokenizer.get_vocab()
        except Exception:  # noqa: BLE001 - any tokenizer-like object; unknown is a fine answer
            return None
        # Bytes that never occur in UTF-8 (C0, C1, F5..FF) may lack a token: not all 256.
        stand_ins = sum(char in vocab for char in _byte_level_alphabet())
        found = stand_ins >= 200 and any(w in vocab for w in ("\u0120the", "\u0120a", "\u0120"))
    with contextlib.suppress(AttributeError, TypeError):
        tokenizer._lenskit_byte_level = found
    return found


#: Joins the bytes of ``<F0 9F>`` until the whitespace symbols are in (a space would be ␣).
_HEX_GAP = "\ue000"


def _hex_bytes(data: bytes) -> str:
    """Bytes that are no (printable) text, as ``<F0 9F>``."""
    return "<" + _HEX_GAP.join(f"{b:02X}" for b in data) + ">"


def _bytes_with_hex(data: bytes) -> str:
    """UTF-8 text with each invalid byte sequence (part of a character) and each control
    character other than newline, tab or CR shown as :func:`_hex_bytes`."""
    out: list[str] = []
    while data:
        try:
            out.append(_text_with_hex_controls(data.decode("utf-8")))
            break
        except UnicodeDecodeError as exc:
            out.append(_text_with_hex_controls(data[: exc.start].decode("utf-8")))
            out.append(_hex_bytes(data[exc.start : exc.end]))
            data = data[exc.end :]
    return "".join(out)


def _text_with_hex_controls(text: str) -> str:
    return "".join(
        _hex_bytes(c.encode("utf-8"))
        if unicodedata.category(c) == "Cc" and c not in "\n\t\r"
        else c
        for c in text
    )


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


def format_token(raw: str, max_len: int = 12, *, byte_level: bool | None = None) -> str:
    """Make a token readable: whitespace becomes visible symbols, long tokens get an ellipsis.

    Args:
        raw: the token as the tokenizer's vocabulary spells it (e.g. ``"ĠCanberra"``, or
            ``"ĠcafÃ©"`` for " café" in byte-level BPE) or as decoded text (``" Canberra"``).
        max_len: longest result in characters (the ellipsis included); 0 means no limit.
        byte_level: whether ``raw`` comes from a byte-level BPE vocabulary
            (:func:`byte_level_vocabulary`). True: it is read as UTF-8 bytes, and bytes that
            are part of a character show as ``<F0 9F>`` (not as the stand-ins ``ðŁ``, which
            read like real symbols). False: it is shown as spelled. None (unknown): it is read
            as bytes only when they make whole UTF-8 text.
    """
    hex_bytes = False
    if byte_level and not raw.isascii() and all(c in _byte_level_alphabet() for c in raw):
        alphabet = _byte_level_alphabet()
        text: str | None = _bytes_with_hex(bytes(alphabet[c] for c in raw))
        hex_bytes = True
    elif byte_level is False:
        text = None
    else:
        text = _byte_level_text(raw)
    shown = (raw if text is None else text).translate(_TABLE)
    if not shown.isascii():
        shown = "".join(
            OTHER_SPACE if c != " " and unicodedata.category(c) == "Zs" else c for c in shown
        )
    if hex_bytes:
        shown = shown.replace(_HEX_GAP, " ")
    if shown == "":
        shown = "\u2205"  # ∅: an empty decode must still be visible
    if max_len and len(shown) > max_len:
        shown = shown[: max(1, max_len - 1)] + ELLIPSIS
    return shown


def position_labels(display_tokens: Sequence[str]) -> list[str]:
    """Unique axis labels ``"<position>:<token>"``, so repeated tokens stay separate columns."""
    return [f"{i}:{tok}" for i, tok in enumerate(display_tokens)]


def vocab_strings(tokenizer: Any, ids: np.ndarray) -> np.ndarray:
    """Raw vocabulary strings for an int array of any shape (ids past the tokenizer -> "<id>")."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    n_tok = len(tokenizer)
    strings = []
    known = [int(i) for i in uniq if 0 <= i < n_tok]
    conv = dict(zip(known, tokenizer.convert_ids_to_tokens(known), strict=True)) if known else {}
    for i in uniq:
        s = conv.get(int(i))
        strings.append(s if s is not None else f"<{int(i)}>")
    out = np.empty(len(strings), dtype=object)
    out[:] = strings
    return out[inverse].reshape(ids.shape)


def token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Raw vocabulary strings of a list of ids (the ids themselves without a tokenizer)."""
    if tokenizer is None:
        return [str(i) for i in ids]
    return [str(t) for t in tokenizer.convert_ids_to_tokens([int(i) for i in ids])]
