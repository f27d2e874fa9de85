"""Token display strings."""

from __future__ import annotations

import pytest
from conftest import make_chatml_tokenizer

from lenskit.text.tokens import ELLIPSIS, format_token, position_labels


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
        # byte-level BPE spells UTF-8 bytes with stand-in characters
        ("\u0120caf\u00c3\u00a9", "\u2423caf\u00e9"),  # ĠcafÃ© -> ␣café
        ("\u00e2\u0122\u013e", "\u201c"),  # âĢľ -> “
        ("\u00e4\u00b8\u0143\u00e5\u013d\u00bd", "\u4e2d\u56fd"),  # 中国
        ("\u0120\u00e2", "\u2423\u00e2"),  # part of a character: left as spelled
        # not byte-level: SentencePiece or decoded text stays as it is
        ("\u2581caf\u00e9", "\u2423caf\u00e9"),
        ("caf\u00e9", "caf\u00e9"),
        ("s\u0105", "s\u0105"),  # Polish "są", not "s\x05"
        ("\u0142", "\u0142"),  # "ł"
        ("\u201c", "\u201c"),
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


def test_byte_level_tokens_read_as_text():
    tok = make_chatml_tokenizer()
    text = "R\u00e9p\u00e8te \u00ab caf\u00e9 cr\u00e8me \u00bb \u201cok\u201d \u4e2d\u56fd\n"
    raw = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
    assert "".join(raw) != text  # the vocabulary spells it with stand-ins
    assert format_token("".join(raw), max_len=0) == text.replace(" ", "\u2423").replace(
        "\n", "\u21b5"
    )


def _byte_level(text: bytes) -> str:
    """``text``'s bytes spelled with byte-level BPE's stand-in characters."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    return "".join(table[b] for b in text)


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        # a span that ends inside a character (QA: a greedy answer cut inside a flag emoji
        # showed as "ðŁ¦ĺðŁĩ"): the whole characters read, the cut one is U+FFFD
        ("\U0001f998\U0001f1e6".encode()[:-1], "\U0001f998\ufffd"),
        ("caf\u00e9 \u4e2d\u56fd".encode()[:-2], "caf\u00e9\u2423\u4e2d\ufffd"),
        # ... or starts inside one
        ("\u4e2d\u56fd".encode()[1:], "\ufffd\u56fd"),
        ("\u00e9\u4e2d\u00e9".encode()[1:-1], "\ufffd\u4e2d\ufffd"),
    ],
)
def test_cut_characters_at_the_ends(data: bytes, shown: str):
    assert format_token(_byte_level(data), max_len=0) == shown


@pytest.mark.parametrize(
    "raw",
    [
        _byte_level("\U0001f998".encode()[:2]),  # only a fragment: nothing whole to show
        _byte_level(b"Caf" + "\u00e9".encode()[:1]),  # whole part ASCII: no evidence
        "a\u00c2",  # SentencePiece-style text using stand-in characters
        "s\u0105",  # Polish "są"
    ],
)
def test_cut_characters_need_a_whole_multibyte_character(raw: str):
    assert format_token(raw, max_len=0) == raw


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        # QA: a no-break-space token (byte-level "Âł") showed as a blank tooltip entry
        ("\u00c2\u0142", "\u237d"),
        ("\u0120\u00c2\u0142", "\u2423\u237d"),
        ("\u00a0", "\u237d"),
        ("\u3000", "\u237d"),  # ideographic space
        ("a\u2009b", "a\u237db"),  # thin space
        ("a\u200bb", "a\\u200bb"),  # zero-width space
        ("\ufeff", "\\ufeff"),
        ("caf\u00e9", "caf\u00e9"),  # other non-ASCII untouched
    ],
)
def test_invisible_characters_are_visible(raw: str, shown: str):
    assert format_token(raw, max_len=0) == shown


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        # QA: fragments of a character showed as the stand-ins "ðŁ", "¦", "äº", which read
        # like real symbols (a top-1 "¥" looked like a prediction of the yen sign)
        ("\U0001f998".encode()[:2], "<F0 9F>"),
        (b" " + "\U0001f1e6".encode()[:3], "\u2423<F0 9F 87>"),
        ("\u00a6".encode()[1:], "<A6>"),
        ("\u4e2d\u56fd".encode()[:5], "\u4e2d<E5 9B>"),
        ("\U0001f998\U0001f1e6".encode()[:-1], "\U0001f998<F0 9F 87>"),
        (b"\x05a", "<05>a"),  # control characters, too
        (b"\r\n", "\\r\u21b5"),
        # whole text reads as before
        (" caf\u00e9".encode(), "\u2423caf\u00e9"),
        ("\u201c".encode(), "\u201c"),
        (b" Canberra", "\u2423Canberra"),
    ],
)
def test_byte_level_fragments_show_their_bytes(data: bytes, shown: str):
    assert format_token(_byte_level(data), max_len=0, byte_level=True) == shown


@pytest.mark.parametrize("raw", ["\u2581caf\u00e9", "s\u0105", "\u00e4\u00ba", "<0xF0>", "a\u00c2"])
def test_not_byte_level_stays_as_spelled(raw: str):
    """A SentencePiece vocabulary (byte_level=False) is never read as bytes."""
    assert format_token(raw, max_len=0, byte_level=False) == raw.replace("\u2581", "\u2423")


def test_byte_level_vocabulary():
    import transformers
    from tokenizers import Tokenizer, models

    from lenskit.text.tokens import byte_level_vocabulary

    assert byte_level_vocabulary(make_chatml_tokenizer()) is True
    words = Tokenizer(models.WordLevel({"a": 0, "\u00e9": 1, "[UNK]": 2}, unk_token="[UNK]"))
    assert (
        byte_level_vocabulary(transformers.PreTrainedTokenizerFast(tokenizer_object=words)) is False
    )
    assert byte_level_vocabulary(object()) is None
    # SentencePiece converted to a fast tokenizer (Llama-2, Gemma): byte fallback, not level
    from tokenizers import decoders

    words.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback()])
    sentencepiece = transformers.PreTrainedTokenizerFast(tokenizer_object=words)
    assert byte_level_vocabulary(sentencepiece) is False


def test_private_use_characters_stay():
    """Review: the stand-in joining <F0 9F>'s bytes is U+E000; a vocabulary that really holds
    it keeps it."""
    assert format_token("a\ue000b", max_len=0) == "a\ue000b"
    assert format_token("a\ue000b", max_len=0, byte_level=False) == "a\ue000b"
