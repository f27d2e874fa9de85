"""``lenskit fidelity [DATA] --lens SPEC [--lens SPEC ...] -o FILE``: how faithfully lenses read
each row, side by side.

Per read-out row and lens: the mean KL(out || row) and the top-1 agreement with row "out", at
the chat template's tokens and at the user's text apart (:func:`lenskit.lens_fidelity`). The
logit lens is always compared; each ``--lens`` adds one (``tuned``, a tuned lens directory).

Held-out data: ``--heldout FILE`` (a training run's ``heldout.pt``), or the prompts of DATA (a
prompt file), each wrapped in the chat template; without either, the ``heldout.pt`` of the
first ``--lens`` whose training directory has one (a directory, or ``tuned``: the cached
lens's), else the prompts of lenskit's bundled set. The table goes to stdout; ``-o`` writes it
(.json, .csv) or the chart (.png, .svg, .html: :func:`lenskit.charts.fidelity_chart`).
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any

import pandas as pd

from lenskit.cli.common import (
    CliError,
    add_lens_argument,
    add_model_arguments,
    add_out_argument,
    charts_for,
    check_lens_spec,
    check_out,
    load_model,
    progress_flag,
    resolve_lens,
    say,
    write_data,
    write_file,
)
from lenskit.dataset import BUNDLED, FORMATS, load_prompts
from lenskit.errors import InputError
from lenskit.lens.fidelity import FIDELITY_REGIONS, FidelityReport, lens_fidelity
from lenskit.lens.lenses import LENSES
from lenskit.lens.store import CACHED_LENS, lens_cache_dir
from lenskit.lens.train import HELDOUT_FILE
from lenskit.model import context_length

__all__ = ["HELP", "add_fidelity_arguments", "fidelity_table", "run_fidelity"]

#: The subcommand's one-line help.
HELP = "lens fidelity: per row, KL(out || row) and top-1 agreement of lenses, side by side"
#: The lens always compared.
BASELINE = "logit"
#: Column titles of the printed table, by region and metric.
REGION_TITLES = {"template": "template", "user": "user text"}
METRIC_TITLES = {"mean_kl": "KL (nats)", "top1_agreement": "top-1 agree"}


def add_fidelity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data",
        nargs="?",
        default=None,
        metavar="DATA",
        help=f"a {', '.join(FORMATS)} prompt file whose prompts are read in the chat template "
        f"(default: a lens directory's held-out set, else lenskit's own set, {BUNDLED!r})",
    )
    add_model_arguments(parser)
    add_lens_argument(
        parser,
        f" to compare with the {BASELINE} lens (repeatable)",
        action="append",
        default=None,
    )
    parser.add_argument(
        "--heldout",
        default=None,
        metavar="FILE",
        help=f"held-out transcripts: a training run's {HELDOUT_FILE} (default without DATA: the "
        "one of the first --lens trained into a directory or the cache, else the bundled "
        "prompts)",
    )
    parser.add_argument(
        "--system", default=None, help="system prompt of the prompts of DATA that have none"
    )
    add_out_argument(parser, "; .json/.csv hold the long table, one line per lens, region, row")


def _specs(args: argparse.Namespace) -> list[str]:
    """The lenses to compare: the logit lens, then each ``--lens`` (repeats dropped)."""
    specs = [BASELINE]
    for spec in args.lens or []:
        check_lens_spec(spec)
        if spec not in specs:
            specs.append(spec)
    return specs


def _read_heldout(path: Path) -> list[Any]:
    """The transcripts of a ``heldout.pt`` (read with ``weights_only=True``)."""
    import torch

    if not path.is_file():
        raise CliError(f"--heldout {path}: no such file")
    try:
        records = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CliError(
            f"{path}: not a held-out set of lenskit train-lens (a list of transcripts, read "
            f"with weights_only=True; {type(exc).__name__})"
        ) from None
    if not isinstance(records, list) or not records:
        raise CliError(f"{path}: holds no held-out transcripts (the run held out 0%?)")
    return records


def _load_lenses(model: Any, specs: list[str]) -> list[Any]:
    """Each spec's lens; a lens directory's is named ``tuned:DIRNAME`` in the table and the
    chart, so that two directories (or one and the cached lens) tell apart."""
    lenses = []
    for spec in specs:
        lens = resolve_lens(model, spec)
        if spec not in LENSES and spec != CACHED_LENS:
            lens.name = f"{lens.name}:{Path(spec).resolve().name}"
        lenses.append(lens)
    return lenses


def _heldout_path(args: argparse.Namespace, specs: list[str], model: Any) -> Path | None:
    """The ``heldout.pt`` to read: ``--heldout``, else (no DATA given) the first lens
    directory's (``tuned``: the cached lens's), else None (the prompts of DATA)."""
    if args.heldout is not None:
        return Path(args.heldout)
    if args.data is not None:
        return None
    for spec in specs[1:]:
        directory = lens_cache_dir(model) if spec == CACHED_LENS else Path(spec)
        if (directory / HELDOUT_FILE).is_file():
            return directory / HELDOUT_FILE
    return None


def _prompts(args: argparse.Namespace, tokenizer: Any, model: Any) -> list[Any]:
    """The prompts of DATA: text, or chat messages where an item has its own system prompt."""
    prompts = load_prompts(args.data, tokenizer=tokenizer, max_length=context_length(model))
    out: list[Any] = []
    for item in prompts:
        if item.system is None:
            out.append(item.prompt)
        else:
            out.append(
                [
                    {"role": "system", "content": item.system},
                    {"role": "user", "content": item.prompt},
                ]
            )
    return out


def fidelity_table(report: FidelityReport) -> pd.DataFrame:
    """The printed table: one line per (row, lens), rows in read-out order and the lenses of a
    row together; columns (region, metric): KL (nats) and top-1 agreement per region."""
    columns, data = [], []
    for j, region in enumerate(FIDELITY_REGIONS):
        for metric, title in METRIC_TITLES.items():
            columns.append((REGION_TITLES[region], title))
            # [n, R] -> [R, n] -> R * n values, the lenses of a row together
            data.append(getattr(report, metric)[:, j, :].T.reshape(-1))
    index = pd.MultiIndex.from_product(
        [report.layer_names.tolist(), report.lenses.tolist()], names=["row", "lens"]
    )
    return pd.DataFrame(
        dict(zip(columns, data, strict=True)),
        index=index,
        columns=pd.MultiIndex.from_tuples(columns),
    )


def _print_table(report: FidelityReport, source: str) -> None:
    n_template, n_user = (int(v) for v in report.n)
    print(
        f"lens fidelity: {', '.join(report.lenses.tolist())} on {report.n_transcripts} "
        f"transcripts of {source} ({n_template} template positions, {n_user} user-text "
        f"positions), {report.model_name or 'model'}; reference: row out"
    )
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(fidelity_table(report).to_string(float_format=lambda v: f"{v:.3f}", na_rep="-"))
    inner = report.mean_kl[:, :, 1:-1]  # rows 1..L-1
    if not inner.shape[-1]:
        return
    for i, lens in enumerate(report.lenses.tolist()):
        means = ", ".join(
            f"{REGION_TITLES[r]} {float(inner[i, j].mean()):.3f}"
            if report.n[j]
            else f"{REGION_TITLES[r]} - (no positions)"
            for j, r in enumerate(FIDELITY_REGIONS)
        )
        print(f"mean KL over rows 1..L-1, {lens}: {means} nats")


def run_fidelity(args: argparse.Namespace) -> int:
    out = check_out(args.out)
    charts = charts_for(out)
    specs = _specs(args)
    if args.heldout is not None and args.data is not None:
        raise CliError("give DATA (prompts) or --heldout (transcripts), not both")
    if args.heldout is not None and not Path(args.heldout).is_file():
        raise CliError(f"--heldout {args.heldout}: no such file")
    if args.data is not None:
        load_prompts(args.data)  # a bad file or line, named, before the model loads
    model, tokenizer = load_model(args)
    lenses = _load_lenses(model, specs)
    heldout = _heldout_path(args, specs, model)
    if heldout is not None:
        data, source = _read_heldout(heldout), str(heldout)
    else:
        data, source = _prompts(args, tokenizer, model), args.data or BUNDLED
    try:
        report = lens_fidelity(
            model, tokenizer, lenses, data, system=args.system, progress=progress_flag(args.quiet)
        )
    except InputError as exc:
        if heldout is None:
            raise
        raise InputError(f"{heldout}: {exc}") from exc
    _print_table(report, source)
    if charts is None:
        write_data(report, out)
    else:
        write_file(out, lambda p: charts.save_chart(charts.fidelity_chart(report), p))
    say(args, f"wrote {out} ({len(report.lenses)} lenses x {len(report.layer_names)} rows)")
    return 0
