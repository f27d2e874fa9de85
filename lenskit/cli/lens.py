"""``lenskit lens "PROMPT" --out FILE``: the logit lens of one prompt, as data or a chart.

The arguments become a :class:`~lenskit.requests.LensRequest`, run by :func:`lenskit.run`;
``--range`` and ``--metric`` only shape the chart file and are checked before any work.
``--lens`` names the lens (resolved once, after the model loads, into the request's lens
object); ``--sublayers`` adds the rows after each block's attention (``emb, 1.attn, 1, ...``).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from lenskit.cli.common import (
    CliError,
    add_int_option,
    add_lens_argument,
    add_out_argument,
    add_prompt_arguments,
    charts_for,
    check_lens_spec,
    check_out,
    load_model,
    parse_range,
    progress_flag,
    read_prompt,
    reraise_unless_app_extra,
    resolve_lens,
    say,
    write_data,
    write_file,
)
from lenskit.errors import InputError
from lenskit.requests import TOP_K, LensRequest, check_position

__all__ = ["HELP", "add_lens_arguments", "run_lens"]

#: The subcommand's one-line help.
HELP = "logit lens of one prompt: every layer's prediction at every position"


def _metric_help() -> str:
    try:
        from lenskit.charts import metric_help
    except ModuleNotFoundError as exc:
        reraise_unless_app_extra(exc)
        return "colour of the chart files (needs the 'app' extra)"
    return "colour of the chart files: " + metric_help(target_hint="needs --target")


def add_lens_arguments(parser: argparse.ArgumentParser) -> None:
    add_prompt_arguments(parser)
    add_int_option(parser, TOP_K)
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
    add_lens_argument(parser, " every inner row is read through")
    parser.add_argument(
        "--sublayers",
        action="store_true",
        help="also the residual stream after each block's attention and before its MLP (rows "
        "emb, 1.attn, 1, 2.attn, 2, ..., out); not for parallel-block architectures (GPT-J, "
        "Phi-1/2, ...) nor a tuned lens",
    )
    add_out_argument(parser)


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
            reraise_unless_app_extra(exc)
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


def run_lens(args: argparse.Namespace) -> int:
    out = check_out(args.out)
    charts = charts_for(out)
    target = args.target if args.target_id is None else args.target_id
    request = LensRequest(
        read_prompt(args.prompt), chat=not args.raw, system=args.system, top_k=args.top_k,
        target=target, sublayers=args.sublayers,
    )  # fmt: skip
    metric = _lens_metric(args, request, charts)
    check_lens_spec(args.lens)

    import lenskit

    model, tokenizer = load_model(args)
    request = replace(request, lens=resolve_lens(model, args.lens))
    if charts is not None and isinstance(args.range, tuple):  # before the read-out
        enc = lenskit.encode_prompt(
            tokenizer, request.prompt, chat=not args.raw, system=args.system
        )
        _chart_positions(charts, args.range, len(enc))
    result = lenskit.run(model, tokenizer, request, progress=progress_flag(args.quiet))
    if charts is None:
        write_data(result, out)
    else:
        positions, labels = _chart_positions(charts, args.range, result.n_positions, result)
        # A file has no page column to fit: full-width cells keep the labels readable.
        chart = charts.lens_heatmap(
            result, **({"metric": metric.key} if metric is not None else {}),
            positions=positions, labels=labels,
            cell_width=charts.DETAIL_MAX_CELL if labels else None,
        )  # fmt: skip
        write_file(out, lambda p: charts.save_chart(chart, p))
    say(
        args,
        f"wrote {out} ({result.n_rows} read-out rows x {result.n_positions} positions, "
        f"{result.lens} lens, model {result.model_name})",
    )
    return 0
