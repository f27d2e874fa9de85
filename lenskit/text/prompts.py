"""Turn a prompt into token ids, optionally through the tokenizer's chat template.

The chat template adds "template" (dummy) tokens between the end of the user's text and the
point where the answer starts, e.g. ``<|im_end|> \\n <|im_start|> assistant \\n`` for ChatML.
:func:`encode_prompt` finds them without knowing any template: it renders the template once
more with a sentinel as the user's text, so the text the template appends after the user's
content is known exactly, then maps that character span to tokens through the offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lenskit.errors import InputError, PromptError

__all__ = ["EncodedPrompt", "PromptError", "check_text", "encode_prompt", "special_token_ids"]

# Characters no template adds or strips and no tokenizer merges across (private use area).
_SENTINEL = "\ue000lenskit\ue001"


@dataclass
class EncodedPrompt:
    """A prompt as the model sees it.

    Attributes:
        input_ids: ``[T]`` token ids, exactly what goes into the model.
        tokens: ``[T]`` raw vocabulary strings (e.g. ``"ĠCanberra"``).
        is_special: ``[T]`` True for special tokens (BOS, ``<|im_start|>`` ...).
        template_positions: positions the chat template adds between the end of the user's
            text and the answer, ascending (empty for raw prompts).
        text: the rendered string that was tokenized (the template applied, if any).
        chat: whether the chat template was applied.
        system: the system prompt given (None: the template's default, if any).
        prompt: the user's text.
    """

    input_ids: list[int]
    tokens: list[str]
    is_special: list[bool]
    template_positions: list[int]
    text: str
    chat: bool
    system: str | None = None
    prompt: str = ""
    user_span: tuple[int, int] | None = field(default=None)
    """Token positions ``[start, end)`` of the user's text, when it could be located."""

    def __post_init__(self) -> None:
        self.input_ids = [int(i) for i in self.input_ids]
        self.tokens = [str(t) for t in self.tokens]
        self.is_special = [bool(s) for s in self.is_special]
        self.template_positions = sorted(int(p) for p in self.template_positions)
        n = len(self.input_ids)
        if n == 0:
            raise PromptError("EncodedPrompt has no tokens")
        if len(self.tokens) != n or len(self.is_special) != n:
            raise InputError(
                f"EncodedPrompt: input_ids ({n}), tokens ({len(self.tokens)}) and is_special "
                f"({len(self.is_special)}) must have the same length"
            )
        if any(p < 0 or p >= n for p in self.template_positions):
            raise InputError(f"EncodedPrompt: template_positions out of range [0, {n})")
        if not self.chat and self.template_positions:
            raise InputError("EncodedPrompt: a raw (chat=False) prompt has no template positions")

    def __len__(self) -> int:
        return len(self.input_ids)


def special_token_ids(tokenizer: Any) -> set[int]:
    """Ids of all special tokens: the named ones plus added tokens flagged special."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) if i is not None}
    for idx, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            ids.add(int(idx))
    return ids


def check_text(what: str, text: Any) -> str:
    """``text`` if it is a str that encodes as UTF-8, else :class:`PromptError` naming ``what``.

    Command-line arguments that are not UTF-8 reach Python as lone surrogates (``"\\udcff"``),
    which tokenizers reject with an obscure TypeError.
    """
    if not isinstance(text, str):
        raise PromptError(f"The {what} must be text (a str), got {type(text).__name__}.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end]
        raise PromptError(
            f"The {what} is not valid UTF-8 text (it holds {bad!r} at character {exc.start}): "
            "re-encode it as UTF-8."
        ) from None
    return text


def _messages(prompt: str | Sequence[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [dict(m) for m in prompt]
    if system is not None:
        messages = [m for m in messages if m.get("role") != "system"]
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # noqa: BLE001 - jinja raises many types (e.g. "system role not supported")
        raise PromptError(
            f"The chat template rejected these messages: {exc}. Try without a system prompt, "
            "or use a raw prompt (chat=False / --raw)."
        ) from exc
    if not isinstance(text, str):  # some tokenizers return a list for batched input
        text = text[0]
    return text


def _user_char_span(
    tokenizer: Any, messages: list[dict[str, str]], text: str, content: str
) -> tuple[int, int] | None:
    """Character span of the last message's content inside the rendered ``text``."""
    probe = [dict(m) for m in messages]
    probe[-1]["content"] = _SENTINEL
    try:
        rendered = _render(tokenizer, probe)
    except PromptError:
        rendered = ""
    if rendered.count(_SENTINEL) == 1:
        prefix, suffix = rendered.split(_SENTINEL)
        # The template is the same text around any content: what follows the sentinel is
        # exactly what the template appends after the user's text (the template tokens).
        if (
            text.startswith(prefix)
            and text.endswith(suffix)
            and len(prefix) + len(suffix) <= len(text)
        ):
            return len(prefix), len(text) - len(suffix)
    # Fallback: the template may rewrite content (e.g. trim it); look for it from the end.
    needle = content.strip()
    start = text.rfind(needle)
    if start < 0:
        return None
    return start, start + len(needle)


def _tokenize(
    tokenizer: Any, text: str, add_special_tokens: bool
) -> tuple[list[int], list[tuple[int, int]] | None]:
    try:
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, TypeError, ValueError):
        # Slow (Python) tokenizers have no offsets.
        enc = tokenizer(text, add_special_tokens=add_special_tokens)
        return list(enc["input_ids"]), None


def _token_span(
    tokenizer: Any,
    text: str,
    ids: list[int],
    offsets: list[tuple[int, int]] | None,
    char_span: tuple[int, int],
) -> tuple[int, int]:
    """Token positions ``[start, end)`` covering the user's text; template tokens are >= end."""
    c0, c1 = char_span
    if offsets is not None:
        # A token belongs to the template only when it starts at or after the end of the
        # user's text; one that straddles the boundary still carries user text.
        end = next((i for i, (s, e) in enumerate(offsets) if s >= c1 and e > s), len(ids))
        # Zero-width tokens (BOS added by a post-processor) before the boundary are not user text.
        start = next((i for i, (s, e) in enumerate(offsets) if e > c0), end)
        return min(start, end), end
    # No offsets: count the tokens of the text before each boundary.
    n_before_end = len(tokenizer(text[:c1], add_special_tokens=False)["input_ids"])
    n_before_start = len(tokenizer(text[:c0], add_special_tokens=False)["input_ids"])
    return min(n_before_start, n_before_end), min(n_before_end, len(ids))


def encode_prompt(
    tokenizer: Any,
    prompt: str | Sequence[dict[str, str]],
    *,
    chat: bool = True,
    system: str | None = None,
    max_length: int | None = None,
) -> EncodedPrompt:
    """Tokenize a prompt, raw or wrapped in the tokenizer's chat template.

    Args:
        tokenizer: a Hugging Face tokenizer (fast ones give exact template positions).
        prompt: the user's text, or a list of chat messages ``{"role", "content"}`` (the last
            one's content is "the user's text").
        chat: apply ``tokenizer.apply_chat_template`` with ``add_generation_prompt=True``.
        system: optional system prompt (chat only); None keeps the template's default.
        max_length: the model's context in tokens; longer prompts raise.

    Returns:
        :class:`EncodedPrompt`; with ``chat=True`` the template's BOS (if any) appears once.

    Raises:
        PromptError: empty prompt, chat without a chat template, prompt too long, system
            prompt with ``chat=False``, or a template that rejects the messages.
    """
    if isinstance(prompt, str):
        content = check_text("prompt", prompt)
    else:
        if not isinstance(prompt, Sequence) or not all(isinstance(m, dict) for m in prompt):
            raise PromptError(
                "The prompt must be text (a str) or a list of chat messages "
                f"{{'role': ..., 'content': ...}}, got {type(prompt).__name__}."
            )
        if not chat:
            raise PromptError("A list of chat messages needs chat=True.")
        if not prompt:
            raise PromptError("The prompt is empty: give at least one message.")
        for i, message in enumerate(prompt):
            check_text(f"role of message {i}", message.get("role"))
            if isinstance(message.get("content"), str):
                check_text(f"content of message {i}", message["content"])
        # Earlier turns may hold None / structured content (tool calls): the template decides.
        content = check_text("content of the last message", prompt[-1].get("content"))
    if system is not None:
        check_text("system prompt", system)
    if not content.strip():
        raise PromptError("The prompt is empty (or only whitespace): type some text.")
    if system is not None and not chat:
        raise PromptError(
            "A system prompt needs the chat template (chat=True): use the chat template, or "
            "leave the system prompt out."
        )
    specials = special_token_ids(tokenizer)

    if chat:
        if not getattr(tokenizer, "chat_template", None):
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise PromptError(
                f"The tokenizer of {name!r} has no chat template, so the prompt cannot be wrapped "
                "as a chat. Use a raw prompt (chat=False, or --raw on the command line), or an "
                "instruct/chat model."
            )
        messages = _messages(prompt, system)
        text = _render(tokenizer, messages)
        # The rendered text already holds BOS and every special token the template wants:
        # adding special tokens again would give a double BOS.
        ids, offsets = _tokenize(tokenizer, text, add_special_tokens=False)
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
            ids, offsets = ids[1:], (offsets[1:] if offsets is not None else None)
        char_span = _user_char_span(tokenizer, messages, text, content)
        if char_span is None:
            user_span = None
            template: list[int] = []
        else:
            user_span = _token_span(tokenizer, text, ids, offsets, char_span)
            template = list(range(user_span[1], len(ids)))
    else:
        text = content
        ids, _ = _tokenize(tokenizer, text, add_special_tokens=True)
        user_span = (0, len(ids))
        template = []

    if not ids:
        raise PromptError("The prompt produced no tokens.")
    if max_length is not None and len(ids) > max_length:
        raise PromptError(
            f"The prompt is {len(ids)} tokens (template included), longer than the model's "
            f"context of {max_length} tokens: shorten it."
        )
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return EncodedPrompt(
        input_ids=ids,
        tokens=[t if t is not None else "" for t in tokens],
        is_special=[i in specials for i in ids],
        template_positions=template,
        text=text,
        chat=chat,
        system=system,
        prompt=content,
        user_span=user_span,
    )
