"""Aligned columns: the same slot of every prompt of a set, so cells average over prompts.

Column ``-k .. -1`` is the k-th last token of the user's text; column ``0 .. S-1`` is template
slot s, the s-th token the chat template appends after the user's text. The template suffix
is the same token sequence for every prompt of one tokenizer (and system prompt), so slot s
means the same token everywhere; the columns are labelled by that token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lenskit.errors import InputError
from lenskit.text.prompts import EncodedPrompt
from lenskit.text.tokens import format_token

__all__ = ["Alignment", "align"]


@dataclass(frozen=True)
class Alignment:
    """The aligned columns of a prompt set.

    Attributes:
        user_tokens: k, the user's last tokens read (columns -k..-1).
        template_ids: ``[S]`` the template suffix's token ids (columns 0..S-1).
        template_tokens: ``[S]`` their vocabulary strings.
    """

    user_tokens: int
    template_ids: tuple[int, ...]
    template_tokens: tuple[str, ...]

    @property
    def columns(self) -> list[int]:
        """``[-k, ..., -1, 0, ..., S-1]``."""
        return [*range(-self.user_tokens, 0), *range(len(self.template_ids))]

    def labels(self, byte_level: bool | None = None) -> list[str]:
        """Column labels: ``"user -3"`` .. ``"user -1"``, then each template token as shown."""
        user = [f"user {c}" for c in range(-self.user_tokens, 0)]
        return [*user, *(format_token(t, byte_level=byte_level) for t in self.template_tokens)]

    def positions(self, enc: EncodedPrompt) -> list[int | None]:
        """This prompt's position of each column (None where its text has fewer tokens)."""
        end = enc.template_positions[0]
        start = enc.user_span[0] if enc.user_span is not None else 0
        user = [end + c if end + c >= start else None for c in range(-self.user_tokens, 0)]
        return [*user, *range(end, end + len(self.template_ids))]


def _suffix(enc: EncodedPrompt) -> tuple[int, ...]:
    return tuple(enc.input_ids[enc.template_positions[0] :])


def align(encoded: Sequence[EncodedPrompt], user_tokens: int) -> Alignment:
    """The columns shared by ``encoded`` (chat-encoded prompts of one tokenizer).

    Raises:
        InputError: a prompt has no template tokens (raw text, or a template lenskit cannot
            locate the user's text in), or the template suffix differs between prompts.
    """
    for i, enc in enumerate(encoded):
        if not enc.template_positions:
            raise InputError(
                f"prompt {i} has no chat-template tokens after the user's text: the dataset "
                "mode reads the template slots, so it needs a chat model's template."
            )
    first = _suffix(encoded[0])
    for i, enc in enumerate(encoded):
        if _suffix(enc) != first:
            raise InputError(
                f"prompt {i}'s chat-template suffix {enc.tokens[enc.template_positions[0] :]} "
                f"differs from prompt 0's {encoded[0].tokens[encoded[0].template_positions[0] :]}"
                ": the template slots would not mean the same token in every prompt (this "
                "tokenizer's template appends different tokens to different conversations)."
            )
    tokens = tuple(encoded[0].tokens[encoded[0].template_positions[0] :])
    return Alignment(user_tokens=int(user_tokens), template_ids=first, template_tokens=tokens)
