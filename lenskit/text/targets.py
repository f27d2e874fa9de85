"""Targets: the one token whose probability and rank the lens tracks."""

from __future__ import annotations

from typing import Any

import numpy as np

from lenskit.errors import PromptError, TargetError
from lenskit.text.prompts import check_text

__all__ = ["target_token_id"]


def _spelled_as_vocabulary(target: str) -> bool:
    """Whether ``target`` reads as a vocabulary spelling rather than text: two or more
    characters with SentencePiece's "▁" or one of byte-level BPE's stand-ins for spaces,
    control and non-printable bytes (U+0100..U+0143: "Ġ", "Ċ", "Ł" ...). Plain text such as
    "é" is also a byte-level entry (the byte 0xE9, part of other characters): never that."""
    return len(target) >= 2 and any(c == "\u2581" or "\u0100" <= c <= "\u0143" for c in target)


def target_token_id(tokenizer: Any, target: str | int) -> int:
    """The id of a single-token target such as ``" Canberra"`` (no special tokens added).

    A target that does not encode to one token but is spelled exactly as a vocabulary entry
    with a space / byte marker (``"ĠCanberra"``, ``"▁Paris"``, or ``"ðŁ"`` for a piece of an
    emoji) gives that entry's id.

    Raises:
        TargetError: empty or non-text target, or it tokenizes to more than one token (the
            message shows how it tokenizes).
    """
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return int(target)
    if not isinstance(target, str):
        raise TargetError(
            f"The target must be text (one token, e.g. ' Canberra') or a token id, got "
            f"{type(target).__name__}."
        )
    if target == "":
        raise TargetError("The target is empty: give one token, e.g. ' Canberra' (note the space).")
    try:
        check_text("target", target)
    except PromptError as exc:
        raise TargetError(str(exc)) from None
    ids = tokenizer.encode(target, add_special_tokens=False)
    if len(ids) == 1:
        return int(ids[0])
    if _spelled_as_vocabulary(target):
        exact = tokenizer.convert_tokens_to_ids(target)
        unk = getattr(tokenizer, "unk_token_id", None)
        if isinstance(exact, int) and exact != unk and 0 <= exact < len(tokenizer):
            return exact
    if not ids:
        raise TargetError(f"The target {target!r} gives no tokens.")
    # Each piece as text (" Canberra", not the vocabulary's "ĠCanberra", which would not
    # encode back to itself); a piece that is part of a character shows its vocabulary
    # spelling, which names it when the exact-entry rule above accepts it, else its id does.
    raw = tokenizer.convert_ids_to_tokens(ids)
    texts = [tokenizer.decode([i]) for i in ids]
    pieces = [r if "\ufffd" in t else t for t, r in zip(texts, raw, strict=True)]
    if "\ufffd" in texts[0] and not _spelled_as_vocabulary(pieces[0]):
        first = f"the first piece, {pieces[0]!r}, is part of a character: give its id {ids[0]}"
    else:
        first = f"the first piece is {pieces[0]!r} if you want that"
    hint = ""
    spaced = " " + target.strip()
    if not target.startswith(" ") and len(tokenizer.encode(spaced, add_special_tokens=False)) == 1:
        hint = f" Words after a space usually need the leading space: {spaced!r} is one token."
    raise TargetError(
        f"The target {target!r} is {len(ids)} tokens {pieces}, not one: pick a single token "
        f"({first}).{hint}"
    )
