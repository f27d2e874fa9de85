"""Token display strings."""

from __future__ import annotations

import pytest
from conftest import make_chatml_tokenizer

from lenskit.tokens import ELLIPSIS, format_token, position_labels


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\u0120Canberra", "\u2423Canberra"),  # byte-level space
        ("\u2581Paris", "\u2423Paris"),  # SentencePiece space
        (" Paris", "\u2423Paris"),  # decoded text
        ("\u010a", "\u21b5"),  # byte-level newline
        ("\n\n", "\u21b5\u21b5"),
        ("\u0109", "\u21e5"),
        ("\t", "\u21e5"),
        ("\r", "\\r"),
        ("", "\u2205"),
        ("<|im_start|>", "<|im_start|>"),
    ],
)
def test_format_token(raw, shown):
    assert format_token(raw) == shown


def test_long_tokens_shortened():
    shown = format_token("a" * 40, max_len=12)
    assert len(shown) == 12 and shown.endswith(ELLIPSIS)
    assert format_token("a" * 40, max_len=0) == "a" * 40
    assert format_token("abc", max_len=3) == "abc"


def test_position_labels_unique():
    labels = position_labels(["\u21b5", "a", "\u21b5"])
    assert labels == ["0:\u21b5", "1:a", "2:\u21b5"]
    assert len(set(labels)) == 3


def test_chatml_template_tokens_display():
    tok = make_chatml_tokenizer()
    ids = tok("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    shown = [format_token(t) for t in tok.convert_ids_to_tokens(ids)]
    assert shown[0] == "<|im_end|>" and shown[1] == "\u21b5" and shown[-1] == "\u21b5"
    assert "".join(shown[3:-1]) == "assistant"
