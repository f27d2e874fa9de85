"""``lenskit dataset [PROMPTS] -o DIR``: the lens at the template tokens over a prompt set.

The arguments become a :class:`~lenskit.requests.DatasetRequest` (ranges, defaults and help
from its :class:`~lenskit.requests.IntOption`\\ s) run by
:func:`lenskit.dataset.dataset_result` into DIR, which holds the records (``parts/``), the
summary (``summary.json``) and the state a killed run resumes from. The prompt file is read and
checked before the model loads (a bad line is one error naming the file and the line), then
checked once more against the model's context with its tokenizer. The CLI adds what belongs to
a command line: the lines ``--skip-invalid`` left out (on stderr and in ``DIR/skipped.json``),
a short summary on stdout and the chart files in DIR. ``--lens`` is checked before the model
loads and resolved once after it (:func:`~lenskit.cli.common.resolve_lens`).

Under torchrun (``torchrun --nproc_per_node=N -m lenskit dataset ...``) every process loads
the model on its own device and takes its share of the prompts; only rank 0 prints and writes
files besides the run's own, and a :class:`~lenskit.errors.LenskitError` in any process stops
all of them with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from lenskit.cli.common import (
    CHART_FORMATS,
    CliError,
    ProcessError,
    add_int_option,
    add_lens_argument,
    add_model_arguments,
    chart_modules,
    check_lens_spec,
    load_model,
    progress_flag,
    resolve_lens,
    write_file,
)
from lenskit.dataset import BUNDLED, FORMATS, DatasetResult, PromptSet, load_prompts
from lenskit.dataset import dataset_result as run_dataset_result
from lenskit.dataset.distributed import Ranks, ranks_from_environment
from lenskit.errors import LenskitError
from lenskit.model import context_length
from lenskit.requests import (
    DATASET_BATCH_SIZE,
    DATASET_NEW_TOKENS,
    DATASET_SEED,
    DATASET_TOP_K,
    USER_TOKENS,
    DatasetRequest,
)

__all__ = [
    "CHART_NAMES",
    "HELP",
    "SKIPPED",
    "add_dataset_arguments",
    "chart_builders",
    "run_dataset_command",
    "together",
]

#: The subcommand's one-line help.
HELP = "the lens at the chat-template tokens over a prompt set: hit rates, lift, charts"
#: The file in DIR listing the lines ``--skip-invalid`` left out.
SKIPPED = "skipped.json"
#: Chart files the command writes in DIR (each as .png, .svg and .html); the sweep's three
#: only with ``--sweep``, the categories' only when the prompts have categories.
CHART_NAMES = (
    "answer_hit",
    "lift",
    "answer_hit_by_category",
    "sweep_kl",
    "flip_rate",
    "read_vs_cause",
)
#: Skipped lines whose reasons stderr shows (all are in skipped.json).
SHOWN_REASONS = 3
#: The dataset mode's seed orders the control tokens (the sweep's seed drives its noise).

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "prompts",
        nargs="?",
        default=None,
        metavar="PROMPTS",
        help=f"a {', '.join(FORMATS)} prompt file (.jsonl/.csv fields: prompt, and optional "
        f"system, answer (one word), category); default: lenskit's own set ({BUNDLED!r})",
    )
    parser.add_argument(
        "--out",
        "-o",
        required=True,
        metavar="DIR",
        help="the run's directory: records (parts/*.parquet), summary.json, skipped.json and "
        "the charts (.png, .svg, .html; they need the 'app' extra); the same command resumes "
        "a run that was stopped there",
    )
    add_model_arguments(parser)
    for option in (DATASET_NEW_TOKENS, DATASET_TOP_K, USER_TOKENS):
        add_int_option(parser, option)
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="also the causal check: skip each block at the template positions (KL of the "
        "reply's next-token distributions, answers that flip)",
    )
    add_int_option(parser, DATASET_BATCH_SIZE)
    add_int_option(parser, DATASET_SEED)
    add_lens_argument(parser, " the rows are read through")
    parser.add_argument(
        "--skip-invalid",
        action="store_true",
        help=f"leave bad lines of the prompt file out (listed on stderr and in DIR/{SKIPPED}) "
        "instead of stopping at the first",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run of other options or prompts in DIR (its records and summary)",
    )


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def together(ranks: Ranks, step: Callable[[], T]) -> T:
    """``step()`` on every process; when it raises a LenskitError on any of them, all stop.

    The error is printed once: by rank 0 when it failed too (the usual case: every process
    reads the same file and model; the others' errors are not printed, see
    :func:`~lenskit.cli.common.prints_error`), else by each process that failed, as a
    :class:`~lenskit.cli.common.ProcessError`, and rank 0 names them. One process: ``step()``
    as it is.
    """
    if not ranks.active:
        return step()
    error: LenskitError | None = None
    value: Any = None
    try:
        value = step()
    except LenskitError as exc:
        error = exc
    mine = np.zeros(ranks.world)
    mine[ranks.rank] = 0.0 if error is None else 1.0
    failed = np.flatnonzero(ranks.sum(mine))
    if failed.size == 0:
        return value
    if error is not None and failed[0] == 0:
        raise error  # rank 0 prints it; the others' copies stay silent
    if error is not None:
        raise ProcessError(f"process {ranks.rank} of {ranks.world}: {error}") from error
    names = ", ".join(str(r) for r in failed)
    raise ProcessError(f"stopped: process {names} of {ranks.world} failed (see its error)")


def _close(ranks: Ranks, failed: bool) -> None:
    """End the process group of a torchrun launch (started by ``ranks_from_environment``).
    ``failed``: every process stopped on the same (agreed) error; they wait for each other,
    so that all exit with status 2 rather than torchrun stopping the slower ones."""
    if not ranks.active:
        return
    if failed:
        ranks.barrier()
    ranks.close()


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _check_dir(path: str) -> Path:
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise CliError(f"cannot write the run to {out}: it is a file; give a directory")
    return out


def _chart_module() -> tuple[Any, str | None]:
    """``(lenskit.charts, None)``, or ``(None, why not)`` without the ``app`` extra: the data
    are written all the same."""
    try:
        return chart_modules("chart files"), None
    except CliError as exc:
        return None, str(exc)


def _prompts(args: argparse.Namespace, ranks: Ranks) -> tuple[PromptSet, Any, Any]:
    """The prompt set (checked before the model loads), the model and its tokenizer (on this
    process's device), and the set checked once more against the model's context."""
    source = args.prompts if args.prompts is not None else BUNDLED
    together(ranks, lambda: load_prompts(source, skip_invalid=args.skip_invalid))
    bar = progress_flag(args.quiet) if ranks.rank == 0 else False
    device = ranks.device(args.device)
    model, tokenizer = together(ranks, lambda: load_model(args, device=device, progress=bar))
    prompts = together(
        ranks,
        lambda: load_prompts(
            source, skip_invalid=args.skip_invalid, tokenizer=tokenizer,
            max_length=context_length(model),
        ),
    )  # fmt: skip
    return prompts, model, tokenizer


def _report_skipped(prompts: PromptSet, out: Path) -> None:
    """Count and first reasons of the skipped lines, on stderr."""
    if not prompts.skipped:
        return
    shown = "; ".join(
        f"line {s.line}: {s.reason}" if s.line else f"prompt {s.index}: {s.reason}"
        for s in prompts.skipped[:SHOWN_REASONS]
    )
    more = ", ..." if len(prompts.skipped) > SHOWN_REASONS else ""
    print(
        f"lenskit: warning: skipped {len(prompts.skipped)} invalid line(s) of "
        f"{prompts.source} ({shown}{more}); all are listed in {out / SKIPPED}",
        file=sys.stderr,
    )


def _write_skipped(args: argparse.Namespace, prompts: PromptSet, out: Path) -> None:
    """``DIR/skipped.json`` with ``--skip-invalid`` (an empty list when nothing was left
    out); without it a stale list of an earlier run is removed. Written after the run, whose
    directory takes no files of its own before it starts."""
    path = out / SKIPPED
    if not args.skip_invalid:
        path.unlink(missing_ok=True)
        return
    data = {
        "source": prompts.source,
        "prompts": len(prompts),
        "skipped": [
            {"line": s.line, "index": s.index, "reason": s.reason, "text": s.text}
            for s in prompts.skipped
        ],
    }
    write_file(path, lambda p: p.write_text(json.dumps(data, indent=1, ensure_ascii=False)))


def _run(
    args: argparse.Namespace, request: DatasetRequest, ranks: Ranks, out: Path
) -> tuple[PromptSet, Any, DatasetResult]:
    """Prompts, model and the run into ``out``; a LenskitError here stops every process."""
    prompts, model, tokenizer = _prompts(args, ranks)
    request = replace(request, lens=together(ranks, lambda: resolve_lens(model, args.lens)))
    if ranks.rank == 0:
        _report_skipped(prompts, out)
    try:
        result = run_dataset_result(
            model, tokenizer, prompts, request, output_dir=out, overwrite=args.overwrite,
            progress=progress_flag(args.quiet) if ranks.rank == 0 else None, ranks=ranks,
        )  # fmt: skip
    except KeyboardInterrupt:
        if ranks.rank == 0:
            print(
                f"lenskit: the finished batches are in {out}; run the same command again to "
                "go on from there",
                file=sys.stderr,
            )
        raise
    return prompts, model, result


def run_dataset_command(args: argparse.Namespace) -> int:
    out = _check_dir(args.out)
    check_lens_spec(args.lens)
    request = DatasetRequest(
        user_tokens=args.user_tokens, max_new_tokens=args.max_new_tokens, top_k=args.top_k,
        sweep=args.sweep, batch_size=args.batch_size, seed=args.seed,
    )  # fmt: skip
    ranks = ranks_from_environment()
    failed = False
    try:
        charts, no_charts = _chart_module() if ranks.rank == 0 else (None, None)
        try:
            prompts, model, result = _run(args, request, ranks, out)
        except LenskitError:
            failed = True  # on every process alike (agreed, or the library's own broadcast)
            raise
        if ranks.rank == 0:
            _write_skipped(args, prompts, out)
            written = _write_charts(charts, result, _vocab_size(model), out)
            _print_summary(result, prompts, out, written, no_charts)
    finally:
        _close(ranks, failed)
    return 0


# --------------------------------------------------------------------------------------------
# Charts and summary
# --------------------------------------------------------------------------------------------


def _vocab_size(model: Any) -> int | None:
    """V, for the colour domains of entropy and KL (0 .. ln V)."""
    import lenskit

    try:
        return lenskit.find_readout(model).vocab_size
    except LenskitError:
        return None


def chart_builders(
    charts: Any, result: DatasetResult, vocab_size: int | None = None
) -> dict[str, Callable[[], Any]]:
    """The charts of ``result``, by file name (:data:`CHART_NAMES`): answer hit rate and lift
    at k=1, the hit rate per category when there are categories, and with the sweep its KL
    heatmap, the flip rate per block and read-vs-cause."""
    builders: dict[str, Callable[[], Any]] = {
        "answer_hit": lambda: charts.dataset_heatmap(
            result, "answer_hit", 1, vocab_size=vocab_size
        ),
        "lift": lambda: charts.dataset_heatmap(result, "lift", 1, vocab_size=vocab_size),
    }
    if result.categories:
        builders["answer_hit_by_category"] = lambda: charts.dataset_category_heatmaps(
            result, "answer_hit", 1
        )
    if result.sweep is not None:
        builders["sweep_kl"] = lambda: charts.dataset_sweep_heatmap(result)
        builders["flip_rate"] = lambda: charts.dataset_flip_chart(result)
        builders["read_vs_cause"] = lambda: charts.read_vs_cause_chart(result, 1)
    return builders


def _write_charts(charts: Any, result: DatasetResult, vocab: int | None, out: Path) -> list[str]:
    """Each chart as .png, .svg and .html in ``out``; chart files of an earlier run that this
    one has not (another category set, no sweep) are removed. Returns the names written."""
    if charts is None:
        return []
    builders = chart_builders(charts, result, vocab)
    for name in CHART_NAMES:
        if name not in builders:
            for ext in CHART_FORMATS:
                (out / f"{name}{ext}").unlink(missing_ok=True)
    for name, build in builders.items():
        chart = build()
        for ext in CHART_FORMATS:
            write_file(out / f"{name}{ext}", lambda p, c=chart: charts.save_chart(c, p))
    return list(builders)


def _best(result: DatasetResult, stat: str) -> str:
    """``"0.625 [0.31, 0.86] (Wilson 95% interval of the rate, n=8) at row 2, column 'user
    -1'"``: the cell with the highest value of ``stat`` at k=1."""
    from lenskit.dataset import interval_kind

    frame = result.summary_frame(stat, 1).dropna(subset=["value"])
    if frame.empty:
        return "none (no prompt has a gold answer)"
    cell = frame.loc[frame["value"].idxmax()]
    sign = "+" if stat == "lift" else ""
    value = f"{cell['value']:{sign}.3f}"
    if frame["value"].min() == cell["value"]:
        return f"{value} in every cell (n={int(frame['n'].max())})"
    return (
        f"{value} [{cell['low']:.3f}, {cell['high']:.3f}] ({interval_kind(stat)}, "
        f"n={int(cell['n'])}) at row {cell['layer']}, column {cell['label']!r}"
    )


def _print_summary(
    result: DatasetResult, prompts: PromptSet, out: Path, charts: list[str], no_charts: str | None
) -> None:
    """A few lines on stdout: what ran, the best cells, where the results are."""
    cats = prompts.categories
    categories = f", {len(cats)} categories" if cats else ""
    model = result.state.get("model") or "model"
    print(
        f"dataset: {result.n_prompts} prompts{categories} from {prompts.source}, {model}, "
        f"{len(result.rows)} read-outs x {len(result.columns)} columns"
    )
    print(f"best answer hit rate (top-1): {_best(result, 'answer_hit')}")
    print(f"best lift (top-1 answer - control): {_best(result, 'lift')}")
    files = "summary.json, records in parts/"
    if charts:
        files += f", charts {', '.join(charts)} (.png, .svg, .html)"
    print(f"results: {out} ({files})")
    if no_charts is not None:
        print(f"lenskit: warning: no charts: {no_charts}", file=sys.stderr)
