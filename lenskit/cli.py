"""Command line: ``python -m lenskit lens "PROMPT" --out result.json`` (also ``lenskit lens``).

Subcommands register themselves in :data:`COMMANDS` (name -> (add_arguments, run)); adding
one (e.g. ``sweep``) means writing those two functions and one entry. Every expected failure
(bad arguments, unknown model, empty prompt ...) exits with status 2 and a one-line
``lenskit: error: ...`` message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["COMMANDS", "CliError", "build_parser", "main"]

#: Extensions ``lens --out`` can write: data, or charts through lenskit.charts.
DATA_FORMATS = (".json", ".csv")
CHART_FORMATS = (".png", ".svg", ".html")


class CliError(Exception):
    """An expected failure: printed as one line, exit status 2."""


def _int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer in ``lo..hi`` (no upper bound when ``hi`` is None)."""
    wanted = f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value

    return parse


_positive_int = _int_in(1)


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
    parser.add_argument("prompt", help="the user's text")
    _add_model_arguments(parser)
    parser.add_argument("--raw", action="store_true", help="do not apply the chat template")
    parser.add_argument("--system", default=None, help="system prompt (chat template only)")


def _add_out_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        "-o",
        required=True,
        help=f"output file: {', '.join(DATA_FORMATS + CHART_FORMATS)}",
    )


def _add_lens_arguments(parser: argparse.ArgumentParser) -> None:
    _add_prompt_arguments(parser)
    parser.add_argument("--top-k", type=_positive_int, default=5, help="top tokens per cell (5)")
    parser.add_argument(
        "--target",
        default=None,
        help="single-token target to track, e.g. ' Canberra', or a vocabulary entry such as "
        "'ĠCanberra' (a target that starts with '-': --target=-ing)",
    )
    parser.add_argument(
        "--target-id",
        type=_int_in(0),
        default=None,
        help="the target as a token id instead (e.g. a token that is part of a character)",
    )
    parser.add_argument(
        "--metric",
        default="entropy",
        help="heatmap metric for .png/.svg/.html output: entropy (default), kl_to_final, "
        "top1_prob, target_prob (needs --target)",
    )
    _add_out_argument(parser)


def _check_out(path: str) -> Path:
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in DATA_FORMATS + CHART_FORMATS:
        raise CliError(
            f"cannot write {out.name!r}: the extension must be one of "
            f"{', '.join(DATA_FORMATS + CHART_FORMATS)}"
        )
    # Checked now, not after minutes of work: the result would be lost at write time.
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


def _charts_module() -> Any:
    try:
        from lenskit import charts
    except ImportError as exc:
        raise CliError(
            f".png/.svg/.html output needs lenskit.charts, which is not available yet ({exc}); "
            "write .json or .csv"
        ) from exc
    return charts


def _progress(quiet: bool) -> Callable[[float, str], None] | bool | None:
    return None if quiet else True


def _check_prompt_args(args: argparse.Namespace) -> Path:
    """Checks shared by all commands (before the model loads); returns the output path."""
    out = _check_out(args.out)
    if not args.prompt.strip():
        raise CliError("the prompt is empty: give some text")
    if args.raw and args.system is not None:
        raise CliError("--system needs the chat template: drop --raw or --system")
    return out


def _charts_for(out: Path) -> Any:
    """lenskit.charts when ``out`` is a chart file, else None."""
    return _charts_module() if out.suffix.lower() in CHART_FORMATS else None


def _load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    import lenskit

    return lenskit.load_model(
        args.model,
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        progress=_progress(args.quiet),
    )


def _write_data(result: Any, out: Path) -> bool:
    """Write ``result`` as .json or .csv; False when ``out`` is a chart file (not written)."""
    suffix = out.suffix.lower()
    if suffix == ".json":
        out.write_text(result.to_json())
    elif suffix == ".csv":
        result.to_frame().to_csv(out, index=False)
    else:
        return False
    return True


def _run_lens(args: argparse.Namespace) -> int:
    out = _check_prompt_args(args)
    charts = _charts_for(out)
    # Checked for .json/.csv too (which hold every metric): a typo should not pass silently.
    known = getattr(charts if charts is not None else _charts_module(), "METRICS", None)
    if known is not None and args.metric not in known:
        raise CliError(f"unknown --metric {args.metric!r}; known: {', '.join(known)}")
    if args.target is not None and args.target_id is not None:
        raise CliError("give --target or --target-id, not both")
    target = args.target if args.target_id is None else args.target_id
    if charts is not None and args.metric.startswith("target") and target is None:
        raise CliError(f"--metric {args.metric} needs --target or --target-id")

    import lenskit

    model, tokenizer = _load_model(args)
    result = lenskit.run_lens(
        model,
        tokenizer,
        args.prompt,
        chat=not args.raw,
        system=args.system,
        top_k=args.top_k,
        target=target,
        progress=_progress(args.quiet),
    )
    if not _write_data(result, out):
        # Cell labels stay readable only up to the detail view's width; beyond it, colour only.
        labels = result.n_positions <= charts.DETAIL_MAX_POSITIONS
        # A file has no page column to fit: full-width cells keep their labels readable.
        width = charts.DETAIL_MAX_CELL if labels else None
        chart = charts.lens_heatmap(result, metric=args.metric, labels=labels, cell_width=width)
        charts.save_chart(chart, out)
    if not args.quiet:
        print(
            f"wrote {out} ({result.n_rows} read-out rows x {result.n_positions} positions, "
            f"model {result.model_name})",
            file=sys.stderr,
        )
    return 0


#: Longest ``a-b`` range ``--layers`` / ``--positions`` expands; far beyond any model or
#: prompt, short of a typo's RAM.
MAX_LAYER_RANGE = 100_000


def _index_list(text: str, what: str, example: str) -> list[int]:
    """Parse ``"0,15-21,27"`` into indices (``what``: "block" or "position")."""
    indices: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
            else:
                lo = hi = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {what} indices like {example!r}, got {text!r}"
            ) from None
        if hi < lo:
            raise argparse.ArgumentTypeError(f"the {what} range {part!r} runs backwards")
        if hi - lo >= MAX_LAYER_RANGE:
            raise argparse.ArgumentTypeError(
                f"the {what} range {part!r} spans {hi - lo + 1} {what}s; nothing has that many"
            )
        indices.extend(range(lo, hi + 1))
    return indices


def _layer_list(text: str) -> list[int]:
    """Parse ``"0,15-21,27"`` into block indices."""
    return _index_list(text, "block", "0,15-21,27")


def _position_spec(text: str) -> str | list[int]:
    """``"template"``, ``"all-prompt"``, or prompt indices such as ``"30,31"`` / ``"30-36"``."""
    if text in ("template", "all-prompt"):
        return text
    try:
        return _index_list(text, "position", "30,31,32")
    except argparse.ArgumentTypeError as exc:
        if "expected" not in str(exc):  # a bad range, not a bad word
            raise
        raise argparse.ArgumentTypeError(f"{exc} (or 'template' / 'all-prompt')") from None


def _add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    from lenskit.interventions import INTERVENTIONS, MAX_NEW_TOKENS

    _add_prompt_arguments(parser)
    parser.add_argument(
        "--max-new-tokens",
        type=_int_in(1, MAX_NEW_TOKENS),
        default=5,
        help=f"greedy tokens to generate, 1..{MAX_NEW_TOKENS} (5)",
    )
    parser.add_argument(
        "--layers",
        type=_layer_list,
        default=None,
        help="decoder blocks to intervene on, e.g. '0,15-21,27' (default: all)",
    )
    parser.add_argument(
        "--positions",
        type=_position_spec,
        default="template",
        help="'template' (default), 'all-prompt' or prompt indices, e.g. '30,31' or '30-36'",
    )
    parser.add_argument(
        "--intervention",
        choices=sorted(INTERVENTIONS),
        default="skip",
        help="skip (default), mean or noise",
    )
    parser.add_argument(
        "--seed", type=_int_in(0), default=0, help="seed of the noise intervention (>= 0)"
    )
    _add_out_argument(parser)


def _run_sweep(args: argparse.Namespace) -> int:
    out = _check_prompt_args(args)
    if args.layers is not None and not args.layers:
        raise CliError("--layers selects no block")
    if isinstance(args.positions, list) and not args.positions:
        raise CliError("--positions selects no position (nothing would be intervened on)")
    if args.raw and args.positions == "template":
        raise CliError(
            "--raw prompts have no template tokens to intervene on: pass --positions "
            "all-prompt or prompt indices, or drop --raw"
        )
    charts = _charts_for(out)

    from lenskit.interventions import intervention_sweep

    model, tokenizer = _load_model(args)
    result = intervention_sweep(
        model,
        tokenizer,
        args.prompt,
        chat=not args.raw,
        system=args.system,
        max_new_tokens=args.max_new_tokens,
        layers=args.layers,
        positions=args.positions,
        intervention=args.intervention,
        seed=args.seed,
        progress=_progress(args.quiet),
    )
    if not _write_data(result, out):
        charts.save_chart(charts.sweep_heatmap(result), out)
    if not args.quiet:
        print(
            f"wrote {out} ({len(result.layers)} blocks x {result.n_generated} generated tokens, "
            f"max KL {float(result.kl.max()):.3g} nats)",
            file=sys.stderr,
        )
    return 0


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
        p.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m lenskit`` / ``lenskit``; returns the exit status."""
    from lenskit.interventions import InterventionError
    from lenskit.lens import TargetError
    from lenskit.models import ModelLoadError, ReadoutError
    from lenskit.prompts import PromptError

    try:
        args = build_parser().parse_args(argv)
        return args._run(args)
    # PromptError and TargetError are ValueErrors; charts raise ValueError for bad metrics.
    except (
        CliError,
        ModelLoadError,
        ReadoutError,
        PromptError,
        TargetError,
        InterventionError,
        ValueError,
        OSError,
    ) as exc:
        message = " ".join(str(exc).split())  # one line
        print(f"lenskit: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lenskit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
