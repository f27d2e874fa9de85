"""The tokens each prompt's cells are scored against: answer, next, later and control.

* ``answer``: the gold answer's first token as the reply spells it. The gold answer is looked
  for in the reply (case-insensitive, as a whole word) and the reply token where it begins is
  taken (" Paris" in "The capital of France is Paris."); when the reply lacks it, the first
  token of the answer with a leading space (:func:`spelled_answer`), and ``correct`` is
  False.
* ``next``: the first generated token (what the model is about to say).
* ``later``: the reply's tokens 1..G-1 that occur nowhere in the prompt and are no special
  tokens (lookahead that is not copying); a cell's ``later_rank`` is the best of their ranks.
* ``control``: another prompt's token, by a fixed derangement of the whole set (by seed): the
  partner's gold answer as :func:`spelled_answer` spells it (its ``next`` token when it has
  no gold answer),
  never this prompt's own answer (either spelling), never a token of its reply and never a
  token of the prompt, walking on along the derangement's cycle when it would be. It depends on the set and the seed only,
  not on batching or the number of processes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "PromptTargets",
    "answer_token",
    "control_token",
    "derangement",
    "first_token",
    "later_tokens",
    "spelled_answer",
]


@dataclass(frozen=True)
class PromptTargets:
    """One prompt's target tokens (ids; None where there is none)."""

    answer_id: int | None
    correct: bool | None
    answer_index: int | None  # the reply token where the answer begins (None: not found)
    next_id: int
    later_ids: tuple[int, ...]
    control_id: int | None


def first_token(tokenizer: Any, text: str) -> int:
    """The first token of ``text`` (no special tokens added)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return int(ids[0])


def spelled_answer(tokenizer: Any, answer: str) -> int:
    """The answer's first token as a reply would spell it after a space: the first token of
    ``" " + answer``, or of ``answer`` itself where the former is a bare space (tokenizers
    that split digits write " 22" as " ", "2", "2")."""
    spaced = first_token(tokenizer, " " + answer.strip())
    if tokenizer.decode([spaced]).strip():
        return spaced
    return first_token(tokenizer, answer.strip())


def answer_token(
    tokenizer: Any, reply_ids: Sequence[int], answer: str
) -> tuple[int, bool, int | None]:
    """``(answer_id, correct, reply_index)`` of a gold ``answer`` in a reply (module doc): the
    answer must stand as a word of its own ("C" is not found in "chemical")."""
    pieces = [tokenizer.decode([int(t)]) for t in reply_ids]
    text = "".join(pieces)
    word = rf"(?<!\w){re.escape(answer.strip())}(?!\w)"
    found = re.search(word, text, flags=re.IGNORECASE)
    if found is not None:
        end = 0
        for j, piece in enumerate(pieces):
            end += len(piece)
            if found.start() < end:
                return int(reply_ids[j]), True, j
    return spelled_answer(tokenizer, answer), False, None


def later_tokens(
    reply_ids: Sequence[int], prompt_ids: Sequence[int], specials: set[int]
) -> tuple[int, ...]:
    """The reply's tokens 1..G-1 that are not in the prompt and not special, first seen first."""
    seen = set(prompt_ids) | set(specials)
    out: list[int] = []
    for token in reply_ids[1:]:
        if int(token) not in seen:
            seen.add(int(token))
            out.append(int(token))
    return tuple(out)


def derangement(n: int, seed: int) -> np.ndarray:
    """A permutation of ``0..n-1`` without fixed points, fixed by ``seed`` (n >= 2)."""
    rng = np.random.default_rng([int(seed), n])
    perm = rng.permutation(n)
    # A random permutation's fixed points each swap with the next index: still no fixed point.
    for i in range(n):
        if perm[i] == i:
            j = (i + 1) % n
            perm[i], perm[j] = perm[j], perm[i]
    return perm


def control_token(
    index: int,
    perm: np.ndarray,
    candidate: Callable[[int], int | None],
    own: set[int],
    prompt_ids: Sequence[int],
) -> int | None:
    """The control token of prompt ``index``: the first partner along the derangement's cycle
    whose ``candidate(partner)`` is neither in ``own`` nor in the prompt. None when no prompt
    of the set offers one."""
    banned = set(own) | {int(t) for t in prompt_ids}
    partner = int(perm[index])
    for _ in range(len(perm)):
        if partner == index:
            break  # the cycle closed
        token = candidate(partner)
        if token is not None and token not in banned:
            return token
        partner = int(perm[partner])
    # The cycle offered nothing: try the rest of the set in the derangement's order.
    for partner in perm:
        token = candidate(int(partner))
        if int(partner) != index and token is not None and token not in banned:
            return token
    return None
