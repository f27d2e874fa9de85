"""Command line: ``lenskit lens "PROMPT" --out result.json`` and ``lenskit sweep ...``.

Each subcommand turns its arguments into a request (:mod:`lenskit.requests`), runs it with
:func:`lenskit.run` and writes the result. Every option's range, default, modes and messages
come from the request module, the intervention registry (:data:`lenskit.INTERVENTIONS`) and
the chart metrics, so the command line, the app and the Python API share one set of rules. What
the CLI adds belongs to a command line only: parsing index lists such as ``0,15-21,27``,
reading the prompt from stdin (``-``), and checking the output file before any work.

Subcommands register themselves in :data:`COMMANDS` (name -> (help, add_arguments, run)).
Every :class:`~lenskit.errors.LenskitError` (a user's mistake, a model that cannot be loaded)
is printed as one line ``lenskit: error: ...`` on stderr with exit status 2; anything else is
a bug and keeps its traceback. Chart files (.png/.svg/.html) need the ``app`` extra (Altair,
vl-convert); JSON and CSV do not.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lenskit.errors import InputError, LenskitError
from lenskit.requests import (
    MAX_NEW_TOKENS,
    POSITION_MODES,
    SEED,
    TOP_K,
    IntOption,
    LensRequest,
    SweepRequest,
    check_position,
)

__all__ = [
    "CHART_FORMATS",
    "COMMANDS",
    "DATA_FORMATS",
    "STDIN",
    "CliError",
    "build_parser",
    "generation_path",
    "main",
    "parse_layers",
    "parse_positions",
    "parse_range",
    "read_prompt",
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


# --------------------------------------------------------------------------------------------
# Parsing values
# --------------------------------------------------------------------------------------------


def _int_type(option: IntOption) -> Callable[[str], int]:
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


def _add_int_option(parser: argparse.ArgumentParser, option: IntOption) -> None:
    default = "" if option.default is None else f" (default {option.default})"
    parser.add_argument(
        option.flag,
        type=_int_type(option),
        default=option.default,
        metavar="N",
        help=f"{option.help}; {option.describe()}{default}",
    )


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
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


def _add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """The prompt, the model options, and how the prompt is wrapped (shared by all commands)."""
    parser.add_argument(
        "prompt", help=f"the user's text, or '{STDIN}' to read it from stdin (one final "
        "newline dropped)"
    )  # fmt: skip
    _add_model_arguments(parser)
    parser.add_argument("--raw", action="store_true", help="do not apply the chat template")
    parser.add_argument("--system", default=None, help="system prompt (chat template only)")


def _add_out_argument(parser: argparse.ArgumentParser, extra: str = "") -> None:
    parser.add_argument(
        "--out",
        "-o",
        required=True,
        help=f"output file: {', '.join(DATA_FORMATS + CHART_FORMATS)} (charts need the 'app' "
        f"extra){extra}",
    )


def _metric_help() -> str:
    try:
        from lenskit.charts import metric_help
    except ModuleNotFoundError as exc:
        _reraise_unless_app_extra(exc)
        return "colour of the chart files (needs the 'app' extra)"
    return "colour of the chart files: " + metric_help(target_hint="needs --target")


def _add_lens_arguments(parser: argparse.ArgumentParser) -> None:
    _add_prompt_arguments(parser)
    _add_int_option(parser, TOP_K)
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--target",
        default=None,
        help="single-token target to track, e.g. ' Canberra', or a vocabulary entry such as "
        "'ĠCanberra' (a target that starts with '-': --target=-ing)",
    )
    target.add_argument(
        "--target-id",
        type=int,
        default=None,
        help="the target as a token id instead (e.g. a token that is part of a character)",
    )
    parser.add_argument("--metric", default=None, help=_metric_help())
    parser.add_argument(
        "--range",
        type=parse_range,
        default=None,
        metavar="A-B",
        help="positions of the chart files, inclusive, e.g. '30-45': each cell is labelled with "
        "its top-1 token (at most the detail view's width). Default: the app's detail view, "
        "the end of the question and the chat-template tokens. 'all': every position "
        "(colour only when they are too many to label)",
    )
    _add_out_argument(parser)


def _add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    from lenskit.interventions import INTERVENTIONS

    _add_prompt_arguments(parser)
    _add_int_option(parser, MAX_NEW_TOKENS)
    parser.add_argument(
        "--layers",
        type=parse_layers,
        default=None,
        help="decoder blocks to intervene on, e.g. '0,15-21,27' (default: all)",
    )
    modes = "; ".join(f"'{name}': {text}" for name, text in POSITION_MODES.items())
    parser.add_argument(
        "--positions",
        type=parse_positions,
        default=next(iter(POSITION_MODES)),
        help=f"intervened positions: prompt indices, e.g. '30,31' or '30-36', or {modes} "
        f"(default {next(iter(POSITION_MODES))})",
    )
    names = list(INTERVENTIONS)
    parser.add_argument(
        "--intervention",
        default=names[0],
        metavar="{" + ",".join(names) + "}",
        help="; ".join(f"{name}: {spec.help}" for name, spec in INTERVENTIONS.items())
        + f" (default {names[0]})",
    )
    _add_int_option(parser, SEED)
    parser.add_argument(
        "--generation-lens",
        action="store_true",
        help="also the lens over the prompt and the generated tokens, written beside --out "
        "as NAME.generation.EXT (.json: {'n_prompt', 'result'}; .csv: one row per cell)",
    )
    _add_int_option(parser, TOP_K)
    _add_out_argument(parser)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _check_out(path: str | Path) -> Path:
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


def generation_path(out: Path) -> Path:
    """Where ``sweep --generation-lens`` writes the lens over the generation:
    ``s.json`` -> ``s.generation.json``."""
    return out.with_name(f"{out.stem}.generation{out.suffix}")


def _reraise_unless_app_extra(exc: ModuleNotFoundError) -> None:
    if (exc.name or "").split(".")[0] not in APP_EXTRA_MODULES:
        raise exc


def _charts_for(out: Path) -> Any:
    """:mod:`lenskit.charts` when ``out`` is a chart file (None for data); a clear error
    naming the ``app`` extra when its packages are missing."""
    if out.suffix.lower() not in CHART_FORMATS:
        return None
    try:
        import vl_convert  # noqa: F401  (renders the files)

        from lenskit import charts
    except ModuleNotFoundError as exc:
        _reraise_unless_app_extra(exc)
        raise CliError(
            f"{out.suffix} files need the 'app' extra ({exc.name} is not installed): "
            "pip install 'lenskit[app]', or write .json or .csv"
        ) from exc
    return charts


def _write(out: Path, write: Callable[[Path], Any]) -> None:
    try:
        write(out)
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror or exc}") from exc


def _write_data(result: Any, out: Path) -> None:
    """``result`` (a result record) as .json or .csv."""
    if out.suffix.lower() == ".json":
        _write(out, lambda p: p.write_text(result.to_json()))
    else:
        _write(out, lambda p: result.to_frame().to_csv(p, index=False))


def _write_generation_data(generation: Any, out: Path) -> None:
    """The lens over prompt + generation: .json ``{"n_prompt", "result"}`` (a LensResult's
    dict), or .csv with ``predicts_gen`` = j on the row of the position that predicts Gen j."""
    if out.suffix.lower() == ".json":
        text = json.dumps({"n_prompt": generation.n_prompt, "result": generation.result.to_dict()})
        _write(out, lambda p: p.write_text(text))
        return
    frame = generation.result.to_frame()
    j = frame["position"] - (generation.n_prompt - 1)
    n_gen = generation.result.n_positions - generation.n_prompt
    frame["predicts_gen"] = j.where((j >= 0) & (j < n_gen)).astype("Int64")
    _write(out, lambda p: frame.to_csv(p, index=False))


def _progress(quiet: bool) -> bool | None:
    return None if quiet else True


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr)


def _load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    import lenskit

    return lenskit.load_model(
        args.model,
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        progress=_progress(args.quiet),
    )


# --------------------------------------------------------------------------------------------
# lens
# --------------------------------------------------------------------------------------------


def _lens_metric(args: argparse.Namespace, request: LensRequest, charts: Any) -> Any:
    """The chosen metric (None: the charts' default), checked before any work; a typo is an
    error for .json/.csv too, where the charts can tell (the ``app`` extra installed)."""
    if args.metric is None:
        return None
    known = charts
    if known is None:
        try:
            from lenskit import charts as known
        except ModuleNotFoundError as exc:
            _reraise_unless_app_extra(exc)
            return None  # data files hold every metric; there is no chart to colour
    spec = known.get_metric(args.metric)
    if charts is not None and spec.needs_target and request.target is None:
        raise CliError(f"--metric {spec.key} needs --target or --target-id")
    return spec


def _chart_positions(charts: Any, chosen: Any, n_positions: int, result: Any = None) -> Any:
    """``(positions, labelled)`` of the lens chart for ``--range`` ``chosen`` on a prompt of
    ``n_positions`` tokens (``result`` gives the default range)."""
    if chosen == "all":
        return range(n_positions), n_positions <= charts.DETAIL_MAX_POSITIONS
    if chosen is None:
        first, last = charts.default_detail_range(result)
        return range(first, last + 1), True
    first, last = chosen
    try:
        for p in (first, last):
            check_position(p, n_positions)
    except InputError as exc:
        raise CliError(f"--range {first}-{last}: {exc}") from None
    if last - first + 1 > charts.DETAIL_MAX_POSITIONS:
        raise CliError(
            f"--range {first}-{last} spans {last - first + 1} positions; a labelled chart shows "
            f"at most {charts.DETAIL_MAX_POSITIONS} (--range all draws every position, "
            "unlabelled when they are more)"
        )
    return range(first, last + 1), True


def _run_lens(args: argparse.Namespace) -> int:
    out = _check_out(args.out)
    charts = _charts_for(out)
    target = args.target if args.target_id is None else args.target_id
    request = LensRequest(
        read_prompt(args.prompt), chat=not args.raw, system=args.system, top_k=args.top_k,
        target=target,
    )  # fmt: skip
    metric = _lens_metric(args, request, charts)

    import lenskit

    model, tokenizer = _load_model(args)
    if charts is not None and isinstance(args.range, tuple):  # before the read-out
        enc = lenskit.encode_prompt(
            tokenizer, request.prompt, chat=not args.raw, system=args.system
        )
        _chart_positions(charts, args.range, len(enc))
    result = lenskit.run(model, tokenizer, request, progress=_progress(args.quiet))
    if charts is None:
        _write_data(result, out)
    else:
        positions, labels = _chart_positions(charts, args.range, result.n_positions, result)
        # A file has no page column to fit: full-width cells keep the labels readable.
        chart = charts.lens_heatmap(
            result, **({"metric": metric.key} if metric is not None else {}),
            positions=positions, labels=labels,
            cell_width=charts.DETAIL_MAX_CELL if labels else None,
        )  # fmt: skip
        _write(out, lambda p: charts.save_chart(chart, p))
    _say(
        args,
        f"wrote {out} ({result.n_rows} read-out rows x {result.n_positions} positions, "
        f"model {result.model_name})",
    )
    return 0


# --------------------------------------------------------------------------------------------
# sweep
# --------------------------------------------------------------------------------------------


def _run_sweep(args: argparse.Namespace) -> int:
    out = _check_out(args.out)
    gen_out = _check_out(generation_path(out)) if args.generation_lens else None
    charts = _charts_for(out)
    request = SweepRequest(
        read_prompt(args.prompt), chat=not args.raw, system=args.system,
        max_new_tokens=args.max_new_tokens, layers=args.layers, positions=args.positions,
        intervention=args.intervention, seed=args.seed, generation_lens=args.generation_lens,
        top_k=args.top_k,
    )  # fmt: skip

    import lenskit

    model, tokenizer = _load_model(args)
    report = lenskit.run(model, tokenizer, request, progress=_progress(args.quiet))
    sweep = report.sweep
    if charts is None:
        _write_data(sweep, out)
    else:
        _write(out, lambda p: charts.save_chart(charts.sweep_heatmap(sweep), p))
    _say(
        args,
        f"wrote {out} ({len(sweep.layers)} blocks x {sweep.n_generated} generated tokens, "
        f"max KL {float(sweep.kl.max()):.3g} nats)",
    )
    if report.warning is not None:
        print(f"lenskit: warning: {' '.join(report.warning.split())}", file=sys.stderr)
    generation = report.generation
    if gen_out is not None and generation is not None:
        if charts is None:
            _write_generation_data(generation, gen_out)
        else:
            chart = charts.generation_lens_heatmap(generation)
            _write(gen_out, lambda p: charts.save_chart(chart, p))
        _say(
            args,
            f"wrote {gen_out} (lens over the prompt and {sweep.n_generated} generated tokens, "
            f"{generation.result.n_rows} read-out rows)",
        )
    return 0


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

#: name -> (help, add_arguments(parser), run(args) -> exit status)
COMMANDS: dict[
    str,
    tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]],
] = {
    "lens": (
        "logit lens of one prompt: every layer's prediction at every position",
        _add_lens_arguments,
        _run_lens,
    ),
    "sweep": (
        "generate, then KL(clean || intervened) for interventions at each decoder block",
        _add_sweep_arguments,
        _run_sweep,
    ),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2, no usage dump
        raise CliError(message)


def build_parser() -> argparse.ArgumentParser:
    """The ``lenskit`` parser with one subparser per entry of :data:`COMMANDS`."""
    parser = _Parser(prog="lenskit", description="Logit-lens explorer for causal language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m lenskit`` / ``lenskit``; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except LenskitError as exc:
        message = " ".join(str(exc).split())  # one line
        print(f"lenskit: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lenskit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
