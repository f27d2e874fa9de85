"""Display strings for tokens: visible whitespace, shortened, unique position labels."""

from __future__ import annotations

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
}
_TABLE = str.maketrans(_REPLACEMENTS)
ELLIPSIS = "\u2026"


def format_token(raw: str, max_len: int = 12) -> str:
    """Make a token readable: whitespace becomes visible symbols, long tokens get an ellipsis.

    Args:
        raw: the token as the tokenizer's vocabulary spells it (e.g. ``"ĠCanberra"``) or as
            decoded text (``" Canberra"``).
        max_len: longest result in characters (the ellipsis included); 0 means no limit.
    """
    shown = raw.translate(_TABLE)
    if shown == "":
        shown = "\u2205"  # ∅: an empty decode must still be visible
    if max_len and len(shown) > max_len:
        shown = shown[: max(1, max_len - 1)] + ELLIPSIS
    return shown


def position_labels(display_tokens: Sequence[str]) -> list[str]:
    """Unique axis labels ``"<position>:<token>"``, so repeated tokens stay separate columns."""
    return [f"{i}:{tok}" for i, tok in enumerate(display_tokens)]
