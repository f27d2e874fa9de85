"""Prompt sets for the dataset mode: lenskit's bundled questions, or a user's file or list.

A prompt set is a list of :class:`PromptItem` (a question, optionally a system prompt, a
one-word gold answer and a category). Every rule is checked here, before any model work, so
that a run over hundreds of prompts never fails half-way on line 173: each mistake is an
:class:`~lenskit.errors.InputError` naming the file and its 1-based line (or the item's index
for an in-memory list). With ``skip_invalid=True`` bad lines are recorded in
:attr:`PromptSet.skipped` instead, and the rest goes on.

Accepted files:

* ``.jsonl``: one JSON object per line, ``{"prompt": ..., "system": ..., "answer": ...,
  "category": ...}``; only ``prompt`` is required, unknown keys are ignored.
* ``.csv``: a header naming the columns, one of them ``prompt``; ``system``, ``answer`` and
  ``category`` are optional, other columns are ignored, empty cells mean "not given".
* ``.txt``: one prompt per line (surrounding whitespace stripped).

Blank lines are skipped in every format. Files are read as UTF-8 (a leading BOM is allowed).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lenskit.errors import InputError, PromptError
from lenskit.text.prompts import check_text, encode_prompt

__all__ = [
    "BUNDLED",
    "FORMATS",
    "PromptItem",
    "PromptSet",
    "SkippedLine",
    "bundled_prompts",
    "load_prompts",
    "prompt_items",
]

#: The name that selects lenskit's own prompt set (``load_prompts("bundled")``).
BUNDLED = "bundled"
#: The file extensions :func:`load_prompts` reads.
FORMATS = (".jsonl", ".csv", ".txt")
_FIELDS = ("prompt", "system", "answer", "category")
_SHOWN_CHARS = 80  # how much of a skipped line SkippedLine.text keeps
_HINT = " (or skip bad lines: skip_invalid=True, --skip-invalid on the command line)"


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a set.

    Attributes:
        prompt: the user's text, as it is sent through the chat template.
        system: a system prompt for this item (None: the template's default).
        answer: the gold answer, one word (None: not known).
        category: a free label used to group results (None: none).
        index: 0-based position in the set (valid items only).
        line: 1-based line of the file it came from; 0 for in-memory items.
    """

    prompt: str
    system: str | None = None
    answer: str | None = None
    category: str | None = None
    index: int = 0
    line: int = 0


@dataclass(frozen=True)
class SkippedLine:
    """A line (or in-memory item) left out by ``skip_invalid=True``, and why.

    Attributes:
        line: 1-based line in the file; 0 for in-memory items.
        reason: what was wrong with it, as the error would have said.
        text: the start of the line (at most 80 characters).
        index: position in the in-memory list; None for files.
    """

    line: int
    reason: str
    text: str
    index: int | None = None


@dataclass
class PromptSet:
    """The validated prompts of one source.

    Attributes:
        items: the prompts, in file / list order.
        source: the file's path as given, ``"bundled"``, or ``"<list>"`` for in-memory sets.
        sha256: hex digest of the file's bytes (for in-memory sets, of a canonical JSON of the
            items' fields), so that a result can name exactly the prompts it was run on.
        skipped: the lines left out with ``skip_invalid=True``.
    """

    items: list[PromptItem]
    source: str
    sha256: str
    skipped: list[SkippedLine] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[PromptItem]:
        return iter(self.items)

    def __getitem__(self, index: int) -> PromptItem:
        return self.items[index]

    @property
    def categories(self) -> dict[str, int]:
        """Number of items per category, in order of first appearance (uncategorised
        items are not counted)."""
        counts: dict[str, int] = {}
        for item in self.items:
            if item.category is not None:
                counts[item.category] = counts.get(item.category, 0) + 1
        return counts


class _Invalid(Exception):
    """A bad line or item; the caller adds where it is, then raises or skips it."""


@dataclass(frozen=True)
class _Checks:
    """What is checked besides the fields themselves."""

    skip_invalid: bool = False
    tokenizer: Any = None
    max_length: int | None = None
    chat: bool = True


# ----------------------------------------------------------------------------- entry points


def load_prompts(
    path: str | Path | None = None,
    *,
    skip_invalid: bool = False,
    tokenizer: Any = None,
    max_length: int | None = None,
    chat: bool = True,
) -> PromptSet:
    """Read and validate a prompt set: a ``.jsonl``, ``.csv`` or ``.txt`` file, or the
    bundled set (``path`` None or ``"bundled"``).

    Args:
        path: the file, or None / ``"bundled"`` for lenskit's own questions.
        skip_invalid: record bad lines in ``skipped`` instead of raising (a file with no
            valid line still raises).
        tokenizer: when given, every prompt is encoded as the run will encode it
            (:func:`~lenskit.text.prompts.encode_prompt`), so a prompt the template rejects
            or one longer than ``max_length`` fails here, naming its line.
        max_length: the model's context in tokens (``lenskit.model.context_length``);
            needs ``tokenizer``.
        chat: encode through the chat template (as the dataset mode does) or raw.

    Raises:
        InputError: unknown extension, missing / unreadable / non-UTF-8 / empty file, or a
            bad line (the message names the file and the 1-based line).
    """
    checks = _make_checks(skip_invalid, tokenizer, max_length, chat)
    if path is None or (isinstance(path, str) and path == BUNDLED):
        return _parse(_bundled_bytes(), BUNDLED, ".jsonl", checks)
    raw, suffix = _read_file(path)
    return _parse(raw, str(path), suffix, checks)


def bundled_prompts() -> PromptSet:
    """lenskit's own set: short questions with one-word gold answers, in categories."""
    return load_prompts(BUNDLED)


def prompt_items(
    prompts: Iterable[str | PromptItem | Mapping[str, Any]] | PromptSet,
    *,
    skip_invalid: bool = False,
    tokenizer: Any = None,
    max_length: int | None = None,
    chat: bool = True,
) -> PromptSet:
    """Validate an in-memory list of prompts (strings, :class:`PromptItem` or dicts with the
    keys of a ``.jsonl`` line) by the rules of :func:`load_prompts`.

    Items get ``line=0``; errors name the item's 0-based index. A :class:`PromptSet` is
    returned as it is (checked against ``tokenizer`` when one is given), keeping its source,
    lines and hash.
    """
    checks = _make_checks(skip_invalid, tokenizer, max_length, chat)
    if isinstance(prompts, PromptSet):
        if checks.tokenizer is not None:
            for item in prompts:
                where = (
                    f"{prompts.source}, line {item.line}"
                    if item.line
                    else f"prompt {item.index} of the list"
                )
                try:
                    _check_encoding(item.prompt, item.system, checks)
                except _Invalid as exc:
                    raise InputError(f"{where}: {exc}") from None
        return prompts
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Iterable):
        raise InputError(
            f"The prompts must be a list (of strings, PromptItems or dicts), got "
            f"{type(prompts).__name__}: wrap a single prompt in a list, e.g. [prompt]."
        )
    records = [(0, _shown(entry), entry) for entry in prompts]
    if not records:
        raise InputError("The list of prompts is empty: give at least one prompt.")
    items, skipped = _collect(records, "<list>", checks)
    sha = hashlib.sha256(_canonical_json(items)).hexdigest()
    return PromptSet(items=items, source="<list>", sha256=sha, skipped=skipped)


# ----------------------------------------------------------------------------- reading


def _make_checks(skip_invalid: bool, tokenizer: Any, max_length: int | None, chat: bool) -> _Checks:
    if max_length is not None and tokenizer is None:
        raise InputError("max_length needs a tokenizer: pass tokenizer= to check prompt lengths.")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise InputError(f"max_length must be a positive number of tokens, got {max_length!r}.")
    return _Checks(bool(skip_invalid), tokenizer, max_length, bool(chat))


def _bundled_bytes() -> bytes:
    return resources.files("lenskit").joinpath("data").joinpath("prompts.jsonl").read_bytes()


def _read_file(path: str | Path) -> tuple[bytes, str]:
    """The file's bytes and its (lower-case) extension; InputError for anything unreadable."""
    if not isinstance(path, (str, Path)):
        raise InputError(
            f"The prompt file must be a path (str or Path), got {type(path).__name__}."
        )
    p = Path(path)
    suffix = p.suffix.lower()
    accepted = ", ".join(FORMATS)
    if suffix not in FORMATS:
        raise InputError(
            f"{path}: unknown prompt file type {suffix or '(no extension)'!r}; use one of "
            f"{accepted} (or {BUNDLED!r} for lenskit's own set)."
        )
    if not p.exists():
        raise InputError(f"{path}: no such file; give the path of a {accepted} prompt file.")
    if p.is_dir():
        raise InputError(f"{path} is a folder; give the path of a {accepted} prompt file.")
    try:
        return p.read_bytes(), suffix
    except OSError as exc:
        raise InputError(f"{path} cannot be read ({exc.strerror or exc}): check it.") from None


def _decode(raw: bytes, source: str, checks: _Checks) -> tuple[list[str], list[SkippedLine]]:
    """The file's lines (without line ends); lines that are not UTF-8 raise, or with
    ``skip_invalid`` are recorded and replaced by blank lines (keeping the numbering)."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines, skipped = [], []
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            lines.append(chunk.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as exc:
            reason = (
                f"not valid UTF-8 (byte {chunk[exc.start : exc.start + 1]!r} at byte "
                f"{exc.start} of the line): save the file as UTF-8"
            )
            if not checks.skip_invalid:
                raise InputError(f"{source}, line {number}: {reason}.") from None
            text = chunk.decode("utf-8", errors="replace")[:_SHOWN_CHARS]
            skipped.append(SkippedLine(number, reason, text))
            lines.append("")
    return lines, skipped


def _parse(raw: bytes, source: str, suffix: str, checks: _Checks) -> PromptSet:
    lines, skipped = _decode(raw, source, checks)
    if suffix == ".jsonl":
        records = list(_jsonl_records(lines))
    elif suffix == ".csv":
        records = list(_csv_records(lines, source))
    else:
        records = [(n, t, {"prompt": t.strip()}) for n, t in enumerate(lines, 1) if t.strip()]
    if not records and not skipped:
        raise InputError(f"{source} holds no prompts: write one prompt per line.")
    items, skipped = _collect(records, source, checks, skipped)
    return PromptSet(items, source, hashlib.sha256(raw).hexdigest(), skipped)


def _jsonl_records(lines: list[str]) -> Iterator[tuple[int, str, Any]]:
    """``(line, text, object)`` per non-blank line; a line that is not JSON gives an
    ``_Invalid`` as its object."""
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            yield number, text, json.loads(text)
        except json.JSONDecodeError as exc:
            yield (
                number,
                text,
                _Invalid(
                    f"not valid JSON ({exc.msg} at column {exc.colno}): each line must be one "
                    'JSON object, e.g. {"prompt": "What is the capital of France?"}'
                ),
            )


def _csv_records(lines: list[str], source: str) -> Iterator[tuple[int, str, Any]]:
    """``(line, text, {column: cell})`` per non-blank row; the first non-blank row is the
    header.

    ``line`` is where the row starts (a quoted cell may span lines).
    """
    reader = csv.reader(io.StringIO("\n".join(lines), newline=""))
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, lines[start - 1], _Invalid(f"not valid CSV ({exc})")
            continue
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [name.strip().lower() for name in row]
            if "prompt" not in header:
                raise InputError(
                    f"{source}, line {start}: the CSV header has no 'prompt' column (found "
                    f"{', '.join(map(repr, row))}); the first line must name the columns, "
                    "e.g. prompt,answer,category."
                )
            continue
        text = ",".join(row)
        if len(row) > len(header):
            yield (
                start,
                text,
                _Invalid(
                    f"{len(row)} cells but the header names {len(header)} columns: put quotes "
                    'around a prompt that holds a comma, e.g. "Paris, or Rome?"'
                ),
            )
            continue
        # A short row leaves its last columns empty (spreadsheets drop trailing empty cells).
        pairs = zip(header, row, strict=False)
        cells = {name: (cell if cell.strip() else None) for name, cell in pairs}
        cells["prompt"] = cells.get("prompt") or ""  # an empty cell is an empty prompt
        yield start, text, cells


# ----------------------------------------------------------------------------- validation


def _collect(
    records: list[tuple[int, str, Any]],
    source: str,
    checks: _Checks,
    skipped: list[SkippedLine] | None = None,
) -> tuple[list[PromptItem], list[SkippedLine]]:
    """Validate every record (``(line, text, object)``, line 0 for in-memory items, where the
    object may be an ``_Invalid``) into items, raising on bad ones or adding them to
    ``skipped``."""
    items: list[PromptItem] = []
    skipped = list(skipped or [])
    for position, (line, text, entry) in enumerate(records):
        try:
            if isinstance(entry, _Invalid):
                raise entry
            fields = _fields(entry, checks)
        except _Invalid as exc:
            where = f"{source}, line {line}" if line else f"prompt {position} of the list"
            if not checks.skip_invalid:
                raise InputError(f"{where}: {exc}{_HINT}.") from None
            index = None if line else position
            skipped.append(SkippedLine(line, str(exc), text[:_SHOWN_CHARS], index))
            continue
        items.append(PromptItem(**fields, index=len(items), line=line))
    if not items:
        first = min(skipped, key=lambda s: (s.line, s.index or 0))
        where = f"line {first.line}" if first.line else f"prompt {first.index}"
        raise InputError(
            f"{source} holds no valid prompt ({len(skipped)} skipped; {where}: {first.reason})."
        )
    skipped.sort(key=lambda s: (s.line, s.index or 0))
    return items, skipped


def _fields(entry: Any, checks: _Checks) -> dict[str, str | None]:
    """The four fields of one record, validated; ``_Invalid`` says what is wrong."""
    if isinstance(entry, PromptItem):
        entry = {name: getattr(entry, name) for name in _FIELDS}
    elif isinstance(entry, str):
        entry = {"prompt": entry}
    elif not isinstance(entry, Mapping):
        raise _Invalid(
            f"a {_kind(entry)}, not an object: give an object with a prompt, e.g. "
            '{"prompt": "What is the capital of France?"}'
        )
    if entry.get("prompt") is None:
        raise _Invalid('no "prompt": every item needs one, e.g. {"prompt": "What is 7 plus 5?"}')
    prompt = _text(entry, "prompt")
    if not prompt.strip():
        raise _Invalid("the prompt is empty (or only whitespace): write a question or remove it")
    out: dict[str, str | None] = {"prompt": prompt}
    for name in _FIELDS[1:]:
        value = None if entry.get(name) is None else _text(entry, name)
        if value is not None and name != "system":
            value = value.strip()
        out[name] = value if value and value.strip() else None
    answer = out["answer"]
    if answer is not None and any(ch.isspace() for ch in answer):
        raise _Invalid(
            f"the answer must be one word (no spaces), got {answer!r}: the dataset mode "
            "compares it with a single token"
        )
    if checks.tokenizer is not None:
        _check_encoding(prompt, out["system"], checks)
    return out


def _text(entry: Mapping[str, Any], name: str) -> str:
    value = entry[name]
    if not isinstance(value, str):
        raise _Invalid(
            f"the {name} must be text, got a {_kind(value)} ({value!r}): put it in quotes, "
            f'e.g. "{name}": "{value}"'
        )
    try:
        return check_text(name, value)
    except PromptError as exc:
        raise _Invalid(str(exc)) from None


def _check_encoding(prompt: str, system: str | None, checks: _Checks) -> None:
    """Encode the prompt as the run will; the PromptError (too long, ...) becomes ``_Invalid``."""
    try:
        encode_prompt(
            checks.tokenizer,
            prompt,
            chat=checks.chat,
            system=system if checks.chat else None,
            max_length=checks.max_length,
        )
    except PromptError as exc:
        message = str(exc).rstrip(".")
        if message[1:2].islower():  # "The prompt is ..." reads on after "file, line 3: "
            message = message[0].lower() + message[1:]
        raise _Invalid(message) from None


def _kind(value: Any) -> str:
    """The JSON name of a value's type (what a user wrote in the file)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    if value is None:
        return "null"
    return type(value).__name__


def _shown(entry: Any) -> str:
    """An in-memory item as text, for :attr:`SkippedLine.text`."""
    if isinstance(entry, PromptItem):
        entry = entry.prompt
    text = entry if isinstance(entry, str) else json.dumps(entry, ensure_ascii=False, default=str)
    return text[:_SHOWN_CHARS]


def _canonical_json(items: list[PromptItem]) -> bytes:
    """A stable serialisation of the items' fields (UTF-8 JSON, sorted keys), to hash."""
    rows = [{name: getattr(item, name) for name in _FIELDS} for item in items]
    return json.dumps(rows, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
