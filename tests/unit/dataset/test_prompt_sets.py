"""Prompt sets of the dataset mode: the bundled questions, the file formats, and every
mistake in a file reported as an InputError naming the file and its line."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import sys
from importlib import resources
from pathlib import Path

import pytest
from conftest import REPO_ROOT, make_chatml_tokenizer

from lenskit.dataset import (
    PromptItem,
    PromptSet,
    SkippedLine,
    bundled_prompts,
    load_prompts,
    prompt_items,
)
from lenskit.errors import InputError
from lenskit.text.prompts import encode_prompt

SUFFIX = " Answer with one word."


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def _jsonl(*rows: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


@pytest.fixture(scope="module")
def bundled() -> PromptSet:
    return bundled_prompts()


@pytest.fixture(scope="module")
def answers(bundled) -> dict[str, str]:
    """Bundled prompt (without the one-word instruction) -> gold answer."""
    return {item.prompt.removesuffix(SUFFIX): item.answer for item in bundled}


# ----------------------------------------------------------------------------- bundled set


def test_bundled_set_is_large_and_has_eight_categories_of_twenty(bundled):
    assert len(bundled) >= 200
    big = {name: n for name, n in bundled.categories.items() if n >= 20}
    assert len(big) >= 8, bundled.categories
    assert all(item.category for item in bundled)
    assert sum(bundled.categories.values()) == len(bundled)


def test_bundled_answers_are_single_words(bundled):
    for item in bundled:
        assert item.answer, item
        assert re.fullmatch(r"\w+", item.answer), item


def test_bundled_prompts_are_unique_and_ask_for_one_word(bundled):
    prompts = [item.prompt for item in bundled]
    assert len(set(prompts)) == len(prompts)
    for item in bundled:
        assert item.prompt.endswith("Answer with one word."), item
        assert item.system is None


@pytest.mark.parametrize(
    "question, answer",
    [
        ("What is the capital of Australia?", "Canberra"),
        ("What is the capital of Canada?", "Ottawa"),
        ("What is the chemical symbol for gold?", "Au"),
        ("What is the chemical symbol for potassium?", "K"),
        ("What is 7 plus 5?", "12"),
        ('How do you say "cat" in French?', "chat"),
        ("What is a baby cat called?", "kitten"),
        ('What is the plural of "mouse"?', "mice"),
        ('What is the past tense of "go"?', "went"),
        ("What day comes after Monday?", "Tuesday"),
        ("What month comes after December?", "January"),
        ('What is the opposite of "hot"?', "cold"),
        ("On which continent is Kenya?", "Africa"),
    ],
)
def test_bundled_spot_checks(answers, question, answer):
    assert answers[question] == answer


def test_bundled_arithmetic_is_right(bundled):
    ops = {"plus": int.__add__, "minus": int.__sub__, "times": int.__mul__}
    items = [item for item in bundled if item.category == "arithmetic"]
    assert len(items) >= 20
    for item in items:
        m = re.fullmatch(r"What is (\d+) (plus|minus|times) (\d+)\?" + SUFFIX, item.prompt)
        assert m, item.prompt
        assert item.answer == str(ops[m[2]](int(m[1]), int(m[3]))), item


def test_bundled_names_agree_and_hash_is_of_the_file(bundled):
    raw = resources.files("lenskit").joinpath("data").joinpath("prompts.jsonl").read_bytes()
    for other in (load_prompts(), load_prompts("bundled")):
        assert other.items == bundled.items
        assert other.source == "bundled"
        assert other.sha256 == bundled.sha256 == hashlib.sha256(raw).hexdigest()
    assert [item.index for item in bundled] == list(range(len(bundled)))
    assert [item.line for item in bundled] == list(range(1, len(bundled) + 1))
    assert bundled.skipped == []


def test_bundled_file_is_package_data():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["lenskit"]
    assert any(fnmatch.fnmatch("data/prompts.jsonl", g) for g in globs), globs
    assert (REPO_ROOT / "lenskit" / "data" / "prompts.jsonl").is_file()


# ----------------------------------------------------------------------------- formats


def test_jsonl_round_trip_with_optional_fields_and_blank_lines(tmp_path):
    text = _jsonl(
        {"prompt": "What is 2 plus 2?", "answer": " 4 ", "category": "maths", "extra": [1]},
        "",
        "   ",
        {"prompt": "Hi", "system": "Be terse.", "answer": None, "category": ""},
        {"prompt": "  spaced  "},
    )
    ps = load_prompts(_write(tmp_path, "set.jsonl", text))
    assert ps.items == [
        PromptItem("What is 2 plus 2?", None, "4", "maths", index=0, line=1),
        PromptItem("Hi", "Be terse.", None, None, index=1, line=4),
        PromptItem("  spaced  ", index=2, line=5),
    ]
    assert ps.source == str(tmp_path / "set.jsonl")
    assert ps.categories == {"maths": 1}
    assert len(ps) == 3 and list(ps) == ps.items


def test_csv_round_trip(tmp_path):
    text = (
        "\ufeffCategory, answer ,prompt,notes,system\r\n"
        'geo,Paris,"What is the capital of France, the country?",x,\r\n'
        "\r\n"
        ",,Say hi,,Be kind.\r\n"
        'maths,4,"Two plus two,\nin digits?",,\r\n'
        ",,,,\r\n"
        "geo,Rome,What is the capital of Italy?\r\n"
    )
    ps = load_prompts(_write(tmp_path, "set.csv", text))
    assert ps.items == [
        PromptItem("What is the capital of France, the country?", None, "Paris", "geo", 0, 2),
        PromptItem("Say hi", "Be kind.", None, None, 1, 4),
        PromptItem("Two plus two,\nin digits?", None, "4", "maths", 2, 5),
        PromptItem("What is the capital of Italy?", None, "Rome", "geo", 3, 8),
    ]
    assert ps.categories == {"geo": 2, "maths": 1}


def test_txt_round_trip(tmp_path):
    text = "First prompt\n\n   \n  Second prompt  \r\nThird\n"
    ps = load_prompts(_write(tmp_path, "set.TXT", text))
    assert [(i.prompt, i.line, i.index) for i in ps] == [
        ("First prompt", 1, 0),
        ("Second prompt", 4, 1),
        ("Third", 5, 2),
    ]
    assert all(i.answer is None and i.category is None and i.system is None for i in ps)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "name, content, line, fragment",
    [
        ("a.jsonl", _jsonl({"prompt": "ok"}, "{bad json"), 2, "not valid JSON"),
        ("a.jsonl", _jsonl({"prompt": "ok"}, "", '["a list"]'), 3, "not an object"),
        ("a.jsonl", _jsonl({"question": "no prompt key"}), 1, 'no "prompt"'),
        ("a.jsonl", _jsonl({"prompt": "ok"}, {"prompt": ""}), 2, "prompt is empty"),
        ("a.jsonl", _jsonl({"prompt": " \t "}), 1, "prompt is empty"),
        (
            "a.jsonl",
            _jsonl({"prompt": 42}),
            1,
            "prompt must be text, got a number (42): put it in quotes",
        ),
        (
            "a.jsonl",
            _jsonl({"prompt": "ok", "answer": 12}),
            1,
            "answer must be text, got a number (12)",
        ),
        (
            "a.jsonl",
            _jsonl({"prompt": "ok", "category": ["x"]}),
            1,
            "category must be text, got a list",
        ),
        (
            "a.jsonl",
            _jsonl({"prompt": "ok", "system": True}),
            1,
            "system must be text, got a boolean",
        ),
        ("a.jsonl", _jsonl({"prompt": "a", "answer": "New York"}), 1, "one word (no spaces)"),
        ("a.jsonl", b'{"prompt": "ok"}\n\n{"prompt": "caf\xe9"}\n', 3, "not valid UTF-8"),
        ("a.txt", b"fine\n\xff\xfe broken\n", 2, "not valid UTF-8"),
        ("a.csv", "question,answer\nWhat?,x\n", 1, "no 'prompt' column"),
        ("a.csv", "prompt,answer\nok,x\n\nWhat is 1, or 2?,x\n", 4, "3 cells"),
        ("a.csv", "prompt,answer\nok,x\n,x\n", 3, "prompt is empty"),
        ("a.csv", "prompt,answer\nok,New York\n", 2, "one word (no spaces)"),
    ],
)
def test_bad_lines_name_the_file_and_line(tmp_path, name, content, line, fragment):
    path = _write(tmp_path, name, content)
    with pytest.raises(InputError) as info:
        load_prompts(path)
    message = str(info.value)
    assert str(path) in message
    assert f"line {line}:" in message
    assert fragment in message


@pytest.mark.parametrize("content", ["", "\n\n  \n", "\ufeff"])
@pytest.mark.parametrize("name", ["e.jsonl", "e.txt", "e.csv"])
def test_empty_file_is_an_error_even_when_skipping(tmp_path, name, content):
    path = _write(tmp_path, name, content)
    for skip in (False, True):
        with pytest.raises(InputError, match="holds no prompts") as info:
            load_prompts(path, skip_invalid=skip)
        assert str(path) in str(info.value)


def test_csv_with_only_a_header_is_empty(tmp_path):
    with pytest.raises(InputError, match="holds no prompts"):
        load_prompts(_write(tmp_path, "h.csv", "prompt,answer\n"))


def test_missing_file_folder_and_unreadable_file(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="no such file") as info:
        load_prompts(tmp_path / "missing.jsonl")
    assert "missing.jsonl" in str(info.value)
    (tmp_path / "folder.txt").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        load_prompts(tmp_path / "folder.txt")
    path = _write(tmp_path, "locked.txt", "hi\n")

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(InputError, match="cannot be read.*Permission denied") as info:
        load_prompts(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["p.json", "p.tsv", "prompts"])
def test_unknown_extension_names_the_accepted_ones(tmp_path, name):
    path = _write(tmp_path, name, '{"prompt": "hi"}\n')
    with pytest.raises(InputError) as info:
        load_prompts(path)
    message = str(info.value)
    assert all(ext in message for ext in (".jsonl", ".csv", ".txt")), message
    assert str(path) in message


# ----------------------------------------------------------------------------- skip_invalid


def test_skip_invalid_records_reasons_and_keeps_lines(tmp_path):
    long_bad = "{" + "x" * 200
    content = (
        _jsonl({"prompt": "one"}, long_bad, {"prompt": ""}, "", {"prompt": "two", "answer": "a b"})
        + _jsonl({"prompt": "three", "answer": "3"})
    ).encode() + b'{"prompt": "\xff"}\n'
    ps = load_prompts(_write(tmp_path, "s.jsonl", content), skip_invalid=True)
    assert [(i.prompt, i.index, i.line) for i in ps] == [("one", 0, 1), ("three", 1, 6)]
    assert [s.line for s in ps.skipped] == [2, 3, 5, 7]
    reasons = [s.reason for s in ps.skipped]
    assert "not valid JSON" in reasons[0]
    assert "prompt is empty" in reasons[1]
    assert "one word (no spaces)" in reasons[2]
    assert "not valid UTF-8" in reasons[3]
    assert ps.skipped[0].text == long_bad[:80]
    assert ps.skipped[2].text == json.dumps({"prompt": "two", "answer": "a b"})
    assert all(isinstance(s, SkippedLine) and s.index is None for s in ps.skipped)


def test_skip_invalid_with_no_valid_line_is_still_an_error(tmp_path):
    path = _write(tmp_path, "bad.jsonl", _jsonl({"prompt": ""}, "[1]"))
    with pytest.raises(InputError, match=r"no valid prompt \(2 skipped; line 1: the prompt"):
        load_prompts(path, skip_invalid=True)


# ----------------------------------------------------------------------------- hashing


def test_hash_is_of_the_bytes_stable_and_changes_with_the_file(tmp_path):
    text = _jsonl({"prompt": "What is 1 plus 1?", "answer": "2"})
    a = _write(tmp_path, "a.jsonl", text)
    first = load_prompts(a).sha256
    assert first == hashlib.sha256(text.encode()).hexdigest()
    assert load_prompts(a).sha256 == first
    assert load_prompts(_write(tmp_path, "copy.jsonl", text)).sha256 == first
    _write(tmp_path, "a.jsonl", text.replace('"2"', '"3"'))
    assert load_prompts(a).sha256 != first


def test_in_memory_hash_is_canonical():
    plain = prompt_items(["a", "b"])
    assert plain.sha256 == prompt_items([{"prompt": "a"}, PromptItem("b")]).sha256
    assert plain.sha256 != prompt_items(["b", "a"]).sha256
    assert plain.sha256 != prompt_items(["a", {"prompt": "b", "answer": "x"}]).sha256
    assert re.fullmatch(r"[0-9a-f]{64}", plain.sha256)


# ----------------------------------------------------------------------------- length check


@pytest.fixture(scope="module")
def tokenizer():
    return make_chatml_tokenizer()


def test_too_long_prompt_names_its_line(tmp_path, tokenizer):
    limit = len(encode_prompt(tokenizer, "short one"))
    text = "short one\n\nshort two\n" + "a very long question that goes on " * 4 + "\n"
    path = _write(tmp_path, "p.txt", text)
    assert len(load_prompts(path, tokenizer=tokenizer)) == 3
    with pytest.raises(InputError) as info:
        load_prompts(path, tokenizer=tokenizer, max_length=limit)
    message = str(info.value)
    assert f"{path}, line 4:" in message
    assert f"context of {limit} tokens" in message
    ps = load_prompts(path, tokenizer=tokenizer, max_length=limit, skip_invalid=True)
    assert [i.line for i in ps] == [1, 3]
    assert [s.line for s in ps.skipped] == [4]
    assert "longer than the model's context" in ps.skipped[0].reason


def test_length_check_counts_the_system_prompt(tmp_path, tokenizer):
    limit = len(encode_prompt(tokenizer, "hi", system="Be brief."))
    text = _jsonl({"prompt": "hi", "system": "Be brief."}, {"prompt": "hi", "system": "x " * 40})
    with pytest.raises(InputError, match=r"b\.jsonl, line 2: the prompt is \d+ tokens"):
        load_prompts(_write(tmp_path, "b.jsonl", text), tokenizer=tokenizer, max_length=limit)


def test_max_length_needs_a_tokenizer():
    with pytest.raises(InputError, match="needs a tokenizer"):
        load_prompts(max_length=10)


# ----------------------------------------------------------------------------- in memory


def test_prompt_items_from_strings_dicts_and_items():
    ps = prompt_items(
        [
            "plain",
            {"prompt": "dict", "answer": "yes", "category": "c", "other": 1},
            PromptItem("item", system="sys", index=9, line=9),
        ]
    )
    assert ps.items == [
        PromptItem("plain", index=0, line=0),
        PromptItem("dict", answer="yes", category="c", index=1, line=0),
        PromptItem("item", system="sys", index=2, line=0),
    ]
    assert ps.source == "<list>" and ps.skipped == []


@pytest.mark.parametrize(
    "prompts, fragment",
    [
        (["ok", ""], "prompt 1 of the list: the prompt is empty"),
        (["ok", "fine", 7], "prompt 2 of the list: a number, not an object"),
        ([{"prompt": "ok", "answer": "two words"}], "prompt 0 of the list: the answer must be one"),
        ([{"answer": "x"}], 'prompt 0 of the list: no "prompt"'),
        ("just one string", "must be a list"),
        ([], "list of prompts is empty"),
    ],
)
def test_prompt_items_errors_name_the_index(prompts, fragment):
    with pytest.raises(InputError) as info:
        prompt_items(prompts)
    assert fragment in str(info.value)


def test_prompt_items_skip_invalid_records_the_index():
    ps = prompt_items(["a", "  ", "b", None], skip_invalid=True)
    assert [i.prompt for i in ps] == ["a", "b"]
    assert [(s.line, s.index) for s in ps.skipped] == [(0, 1), (0, 3)]


def test_prompt_items_keeps_a_prompt_set_and_checks_its_lengths(tmp_path, tokenizer):
    loaded = load_prompts(_write(tmp_path, "k.txt", "hi\n\n" + "long words here " * 10 + "\n"))
    assert prompt_items(loaded) is loaded
    limit = len(encode_prompt(tokenizer, "hi"))
    with pytest.raises(InputError, match=r"k\.txt, line 3: the prompt is"):
        prompt_items(loaded, tokenizer=tokenizer, max_length=limit)
