"""Showing text safely: user and model text never reaches the page as markdown or HTML.

User text (prompts, system prompts, model specs, tokens, error messages that quote them) is
shown through ``st.code`` (verbatim) or escaped with :func:`md_escape` before it goes into
markdown (captions, messages).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import streamlit as st

from lenskit.errors import LenskitError
from lenskit.results import LensResult
from lenskit.text import format_token
from lenskit.ui.state import Level, Message

__all__ = [
    "error_message",
    "has_error",
    "md_escape",
    "position_label",
    "position_labeller",
    "show_messages",
    "show_prompt",
]

#: Prompts longer than this (characters, or more than PROMPT_LINES lines) are shown in a
#: scrolling box PROMPT_BOX_PX high, so a long prompt does not push the charts a page down.
LONG_PROMPT_CHARS = 400
PROMPT_LINES = 5
PROMPT_BOX_PX = 120

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$&:=\"'])")


def md_escape(text: str) -> str:
    """Escape markdown (and the HTML markdown would pass through) in user or engine text."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def error_message(exc: LenskitError) -> Message:
    """The library's own message for a user's mistake or a failed load, escaped."""
    return Message("error", md_escape(str(exc)))


def has_error(messages: Iterable[Message]) -> bool:
    return any(m.level == "error" for m in messages)


_SHOW: dict[Level, Callable[[str], object]] = {
    "error": st.error,
    "warning": st.warning,
    "info": st.info,
}


def show_messages(messages: Iterable[Message]) -> None:
    for message in messages:
        _SHOW[message.level](message.text)


def _code_box(text: str) -> None:
    long = len(text) > LONG_PROMPT_CHARS or text.count("\n") > PROMPT_LINES
    st.code(text, language=None, wrap_lines=True, height=PROMPT_BOX_PX if long else "content")


def show_prompt(prompt: str, system: str | None = None) -> None:
    """The prompt as plain text (a long one in a box that scrolls), with its system prompt."""
    if system is not None:
        st.caption("System prompt:")
        _code_box(system)
        st.caption("Prompt:")
    _code_box(prompt)


def position_label(result: LensResult, p: int) -> str:
    """``"7: ␣Canberra"``: a prompt position and its token."""
    return f"{p}: {format_token(str(result.tokens[p]), 24, byte_level=result.byte_level)}"


def position_labeller(result: LensResult) -> Callable[[int], str]:
    """:func:`position_label` with " (template)" after the chat template's positions."""
    template = {int(p) for p in result.template_positions}
    return lambda p: position_label(result, p) + (" (template)" if p in template else "")
