"""Command line: ``lenskit lens "PROMPT" --out result.json``, ``lenskit sweep ...``,
``lenskit dataset [PROMPTS] -o DIR``, ``lenskit train-lens`` and ``lenskit fidelity``.

Each subcommand turns its arguments into a request (:mod:`lenskit.requests`), runs it through
the library and writes the result. Every option's range, default, modes and messages come from
the request module, the intervention registry (:data:`lenskit.INTERVENTIONS`) and the chart
metrics, so the command line, the app and the Python API share one set of rules. What the CLI
adds belongs to a command line only (:mod:`lenskit.cli.common`).

Subcommands register themselves in :data:`COMMANDS` (name -> (help, add_arguments, run)), one
module each: :mod:`~lenskit.cli.lens`, :mod:`~lenskit.cli.sweep`, :mod:`~lenskit.cli.dataset`,
:mod:`~lenskit.cli.train`, :mod:`~lenskit.cli.fidelity`.
Every :class:`~lenskit.errors.LenskitError` (a user's mistake, a model that cannot be loaded)
is printed as one line ``lenskit: error: ...`` on stderr with exit status 2; anything else is
a bug and keeps its traceback. Chart files (.png/.svg/.html) need the ``app`` extra (Altair,
vl-convert); JSON and CSV do not.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from lenskit.cli import dataset, fidelity, lens, sweep, train
from lenskit.cli.common import (
    APP_EXTRA_MODULES,
    CHART_FORMATS,
    DATA_FORMATS,
    MAX_INDEX_RANGE,
    STDIN,
    CliError,
    ProcessError,
    parse_layers,
    parse_positions,
    parse_range,
    prints_error,
    read_prompt,
)
from lenskit.cli.sweep import generation_path
from lenskit.errors import LenskitError

__all__ = [
    "APP_EXTRA_MODULES",
    "CHART_FORMATS",
    "COMMANDS",
    "DATA_FORMATS",
    "MAX_INDEX_RANGE",
    "STDIN",
    "CliError",
    "ProcessError",
    "build_parser",
    "generation_path",
    "main",
    "parse_layers",
    "parse_positions",
    "parse_range",
    "read_prompt",
]

#: name -> (help, add_arguments(parser), run(args) -> exit status)
COMMANDS: dict[
    str,
    tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]],
] = {
    "lens": (lens.HELP, lens.add_lens_arguments, lens.run_lens),
    "sweep": (sweep.HELP, sweep.add_sweep_arguments, sweep.run_sweep),
    "dataset": (dataset.HELP, dataset.add_dataset_arguments, dataset.run_dataset_command),
    "train-lens": (train.HELP, train.add_train_arguments, train.run_train),
    "fidelity": (fidelity.HELP, fidelity.add_fidelity_arguments, fidelity.run_fidelity),
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
        if prints_error(exc):
            message = " ".join(str(exc).split())  # one line
            print(f"lenskit: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lenskit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
