"""What every subcommand of the command line shares: parsing values, arguments, output.

The CLI adds only what belongs to a command line: parsing index lists such as ``0,15-21,27``,
reading the prompt from stdin (``-``), integer options whose range, default and help come from
their :class:`~lenskit.requests.IntOption`, and checking output paths before any work (a bad
path found at write time would lose the run). Every rule of the requests lives in
:mod:`lenskit.requests`; the subcommands (:mod:`lenskit.cli.lens`, :mod:`lenskit.cli.sweep`,
:mod:`lenskit.cli.dataset`) build a request from these pieces.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lenskit.errors import InputError, LenskitError
from lenskit.requests import IntOption

__all__ = [
    "APP_EXTRA_MODULES",
    "CHART_FORMATS",
    "DATA_FORMATS",
    "MAX_INDEX_RANGE",
    "STDIN",
    "CliError",
    "ProcessError",
    "add_int_option",
    "add_lens_argument",
    "add_model_arguments",
    "add_out_argument",
    "add_prompt_arguments",
    "chart_modules",
    "charts_for",
    "check_lens_spec",
    "check_out",
    "int_type",
    "load_model",
    "parse_layers",
    "parse_positions",
    "parse_range",
    "prints_error",
    "progress_flag",
    "read_prompt",
    "reraise_unless_app_extra",
    "resolve_lens",
    "say",
    "write_data",
    "write_file",
]

#: Extensions ``--out`` can write: data, or charts through :mod:`lenskit.charts`.
DATA_FORMATS = (".json", ".csv")
CHART_FORMATS = (".png", ".svg", ".html")
#: The prompt argument that means "read the prompt from stdin".
STDIN = "-"
#: Top-level modules of the ``app`` extra that chart files need.
APP_EXTRA_MODULES = ("altair", "vl_convert")
#: Longest ``a-b`` range an index list expands; far beyond any model or prompt, short of a
#: typo's RAM.
MAX_INDEX_RANGE = 100_000


class CliError(InputError):
    """A mistake in the command line itself (a flag's syntax, the output file)."""


class ProcessError(LenskitError):
    """The failure of some processes of a torchrun launch, printed by the process that raises
    it (where the others failed alike, rank 0 alone prints their common error)."""


def prints_error(exc: LenskitError) -> bool:
    """Whether this process prints ``exc``: under torchrun (``RANK`` set) every process
    fails alike on a bad command line, file or model, and rank 0 alone says why, unless the
    error is this process's own (:class:`ProcessError`)."""
    return isinstance(exc, ProcessError) or os.environ.get("RANK", "0") == "0"


# --------------------------------------------------------------------------------------------
# Parsing values
# --------------------------------------------------------------------------------------------


def int_type(option: IntOption) -> Callable[[str], int]:
    """argparse type of an integer option: the request checks its range (and says so); a
    value that is no integer gets the option's own message."""

    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            try:
                option.check(text)
            except InputError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None
            raise

    parse.__name__ = option.name
    return parse


def _index_list(text: str, what: str, example: str) -> list[int]:
    """``"0,15-21,27"`` as indices (``what``: "block" or "position"); empty parts are skipped."""
    indices: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            lo, hi = (int(v) for v in part.split("-", 1)) if "-" in part else (int(part),) * 2
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {what} indices like {example!r}, got {text!r}"
            ) from None
        if hi < lo:
            raise argparse.ArgumentTypeError(f"the {what} range {part!r} runs backwards")
        if hi - lo >= MAX_INDEX_RANGE:
            raise argparse.ArgumentTypeError(
                f"the {what} range {part!r} spans {hi - lo + 1} {what}s; nothing has that many"
            )
        indices.extend(range(lo, hi + 1))
    return indices


def parse_layers(text: str) -> list[int]:
    """``--layers``: ``"0,15-21,27"`` as block indices (the request checks the selection)."""
    return _index_list(text, "block", "0,15-21,27")


def parse_positions(text: str) -> str | list[int]:
    """``--positions``: prompt indices such as ``"30,31"`` / ``"30-36"``, else a position mode
    (:data:`~lenskit.requests.POSITION_MODES`, checked by the request)."""
    if text.strip(" ,") and not any(c.isdigit() for c in text):
        return text  # a mode's name, or a typo the request names
    indices = _index_list(text, "position", "30,31,32")
    if not indices:
        # The library takes no positions as a sweep of the clean run; on the command line an
        # empty list is a slip, not a request.
        raise argparse.ArgumentTypeError(
            f"{text!r} selects no position (nothing would be intervened on)"
        )
    return indices


def parse_range(text: str) -> tuple[int, int] | str:
    """``--range``: ``"30-45"`` (inclusive), ``"30"`` or ``"all"``."""
    if text.strip() == "all":
        return "all"
    indices = _index_list(text, "position", "30-45")
    if not indices or "," in text:
        raise argparse.ArgumentTypeError(
            f"expected a position range like '30-45', one position or 'all', got {text!r}"
        )
    return indices[0], indices[-1]


def read_prompt(text: str) -> str:
    """The prompt argument, or stdin's text when it is :data:`STDIN` (without the one line
    ending a shell adds). Bytes that are not UTF-8 reach the request, which names them."""
    if text != STDIN:
        return text
    stream = getattr(sys.stdin, "buffer", None)
    try:
        data = stream.read() if stream is not None else sys.stdin.read()
    except OSError as exc:
        raise CliError(f"cannot read the prompt from stdin: {exc.strerror or exc}") from exc
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="surrogateescape")
    for ending in ("\r\n", "\n"):
        if data.endswith(ending):
            return data[: -len(ending)]
    return data


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def add_int_option(parser: argparse.ArgumentParser, option: IntOption) -> None:
    default = "" if option.default is None else f" (default {option.default})"
    parser.add_argument(
        option.flag,
        type=int_type(option),
        default=option.default,
        metavar="N",
        help=f"{option.help}; {option.describe()}{default}",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="default",
        help="'default' (SmolLM2-135M-Instruct), a Hugging Face hub id, a directory or a .gguf file",
    )
    parser.add_argument(
        "--device", default=None, help="cpu (default), cuda, cuda:N, mps, xpu or auto"
    )
    parser.add_argument(
        "--dtype", default=None, help="float32 (CPU default), bfloat16, float16, auto"
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow checkpoints with custom code"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """The prompt, the model options, and how the prompt is wrapped (shared by all commands)."""
    parser.add_argument(
        "prompt", help=f"the user's text, or '{STDIN}' to read it from stdin (one final "
        "newline dropped)"
    )  # fmt: skip
    add_model_arguments(parser)
    parser.add_argument("--raw", action="store_true", help="do not apply the chat template")
    parser.add_argument("--system", default=None, help="system prompt (chat template only)")


def _lens_names() -> tuple[str, ...]:
    from lenskit.lens.lenses import LENSES
    from lenskit.lens.store import CACHED_LENS

    return (*LENSES, CACHED_LENS)


def add_lens_argument(parser: argparse.ArgumentParser, what: str = "", **kwargs: Any) -> None:
    """``--lens SPEC``: a lens name (``logit``, the default), ``tuned`` (the model's own
    trained lens from lenskit's cache) or a tuned-lens directory (``what``: what it reads)."""
    parser.add_argument(
        "--lens",
        metavar="SPEC",
        help=f"the lens{what}: 'logit', 'tuned' (the model's own lens, trained once by "
        "'lenskit train-lens' without -o into lenskit's cache) or a tuned lens directory "
        "(config.json + params.pt, tuned-lens's format)",
        **{"default": "logit", **kwargs},
    )


def check_lens_spec(spec: str) -> str:
    """``spec`` if it can name a lens (a known name or an existing directory); checked before
    the model loads. Whether the lens fits the model is :func:`resolve_lens`'s to say."""
    names = _lens_names()
    if spec in names or Path(spec).is_dir():
        return spec
    raise CliError(
        f"--lens {spec!r}: no such lens; give one of {', '.join(names)} or a tuned lens "
        "directory (holding config.json and params.pt)"
    )


def resolve_lens(model: Any, spec: str) -> Any:
    """The :class:`~lenskit.lens.lenses.Lens` ``spec`` names, loaded once and checked against
    ``model`` (:func:`lenskit.lens.tuned.load_lens`; ``tuned`` without a cached lens is an
    InputError saying how to train it)."""
    from lenskit.lens.tuned import load_lens

    return load_lens(model, spec)


def add_out_argument(parser: argparse.ArgumentParser, extra: str = "") -> None:
    parser.add_argument(
        "--out",
        "-o",
        required=True,
        help=f"output file: {', '.join(DATA_FORMATS + CHART_FORMATS)} (charts need the 'app' "
        f"extra){extra}",
    )


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def check_out(path: str | Path) -> Path:
    """``path`` if a result can be written there; checked before the work, which a bad path
    would lose at write time."""
    out = Path(path)
    if out.suffix.lower() not in DATA_FORMATS + CHART_FORMATS:
        raise CliError(
            f"cannot write {out.name!r}: the extension must be one of "
            f"{', '.join(DATA_FORMATS + CHART_FORMATS)}"
        )
    if out.is_dir():
        raise CliError(f"cannot write {out}: it is a directory")
    parent = out.parent
    if not parent.exists():
        raise CliError(f"the output directory {parent} does not exist")
    if not parent.is_dir():
        raise CliError(f"cannot write {out}: {parent} is not a directory")
    existed = out.exists()
    try:
        with open(out, "ab"):  # appending truncates nothing
            pass
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror or exc}") from exc
    if not existed:
        out.unlink()
    return out


def reraise_unless_app_extra(exc: ModuleNotFoundError) -> None:
    if (exc.name or "").split(".")[0] not in APP_EXTRA_MODULES:
        raise exc


def chart_modules(what: str) -> Any:
    """:mod:`lenskit.charts` (importing vl-convert, which renders the files); a CliError
    naming the ``app`` extra when its packages are missing (``what``: the files, for the
    message)."""
    try:
        import vl_convert  # noqa: F401  (renders the files)

        from lenskit import charts
    except ModuleNotFoundError as exc:
        reraise_unless_app_extra(exc)
        raise CliError(
            f"{what} need the 'app' extra ({exc.name} is not installed): pip install 'lenskit[app]'"
        ) from exc
    return charts


def charts_for(out: Path) -> Any:
    """:mod:`lenskit.charts` when ``out`` is a chart file (None for data); a clear error
    naming the ``app`` extra when its packages are missing."""
    if out.suffix.lower() not in CHART_FORMATS:
        return None
    try:
        return chart_modules(f"{out.suffix} files")
    except CliError as exc:
        raise CliError(f"{exc}, or write .json or .csv") from exc.__cause__


def write_file(out: Path, write: Callable[[Path], Any]) -> None:
    try:
        write(out)
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror or exc}") from exc


def write_data(result: Any, out: Path) -> None:
    """``result`` (a result record) as .json or .csv."""
    if out.suffix.lower() == ".json":
        write_file(out, lambda p: p.write_text(result.to_json()))
    else:
        write_file(out, lambda p: result.to_frame().to_csv(p, index=False))


def progress_flag(quiet: bool) -> bool | None:
    return None if quiet else True


def say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr)


def load_model(
    args: argparse.Namespace, *, device: str | None = None, progress: bool | None = None
) -> tuple[Any, Any]:
    """The model and tokenizer of ``--model`` (``device``: this process's, default
    ``--device``; ``progress``: default the bar unless ``--quiet``)."""
    import lenskit

    return lenskit.load_model(
        args.model,
        device=args.device if device is None else device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        progress=progress_flag(args.quiet) if progress is None else progress,
    )
