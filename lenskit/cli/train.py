"""``lenskit train-lens [DATA] -o DIR``: train a tuned lens for a model, into a directory.

DATA is a prompt file (``.jsonl``/``.csv``/``.txt``, default lenskit's bundled set) whose chat
transcripts the model writes itself, or with ``--text`` one or more plain text files. DIR
receives the lens (``config.json`` + ``params.pt``, tuned-lens's format, loadable at every
checkpoint), the checkpoint a killed run resumes from (``--resume``), the cached transcripts
and the held-out set (:mod:`lenskit.lens.train`). Ranges, defaults and help of the options come
from :mod:`lenskit.lens.train_options`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lenskit.cli.common import (
    CliError,
    add_int_option,
    add_model_arguments,
    load_model,
    progress_flag,
)
from lenskit.dataset import BUNDLED, FORMATS, load_prompts
from lenskit.lens.train import check_options, train_lens
from lenskit.lens.train_options import (
    CHECKPOINT_EVERY,
    EVAL_POSITIONS,
    HELDOUT_PERCENT,
    REPLY_TOKENS,
    SEQ_LEN,
    TRAIN_POSITIONS,
    TRAIN_SEED,
    TRAIN_SEQUENCES,
    TRAIN_STEPS,
)

__all__ = ["HELP", "add_train_arguments", "run_train"]

#: The subcommand's one-line help.
HELP = "train a tuned lens for a model (tuned-lens's format) on its own chat transcripts"
#: The integer options, in the order of ``--help``.
OPTIONS = (
    TRAIN_STEPS, CHECKPOINT_EVERY, TRAIN_SEED, TRAIN_SEQUENCES, TRAIN_POSITIONS,
    HELDOUT_PERCENT, REPLY_TOKENS, SEQ_LEN, EVAL_POSITIONS,
)  # fmt: skip
OPTION_NAMES = tuple(option.name for option in OPTIONS)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data",
        nargs="*",
        metavar="DATA",
        help=f"a {', '.join(FORMATS)} prompt file whose replies the model samples (default: "
        f"lenskit's own set, {BUNDLED!r}); with --text, plain text files",
    )
    parser.add_argument(
        "--out",
        "-o",
        required=True,
        metavar="DIR",
        help="the lens directory (config.json, params.pt), with the checkpoint, the cached "
        "transcripts and the held-out set (heldout.pt)",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--text", action="store_true", help="DATA are plain text files, cut into windows"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in DIR from its last checkpoint"
    )
    for option in OPTIONS:
        add_int_option(parser, option)


def run_train(args: argparse.Namespace) -> int:
    if args.text and not args.data:
        raise CliError("--text needs DATA: one or more text files")
    if not args.text and len(args.data) > 1:
        raise CliError(f"give one prompt file (got {len(args.data)}); several files need --text")
    data = args.data if args.text else (args.data[0] if args.data else None)
    check_options(**{name: getattr(args, name) for name in OPTION_NAMES})
    if args.text:  # checked before the model loads (minutes for a large one)
        for path in data:
            if not Path(path).is_file():
                raise CliError(f"{path}: no such text file")
    else:
        load_prompts(data)  # a bad file or line, named, before the model loads
    model, tokenizer = load_model(args)
    lens = train_lens(
        model, tokenizer, data, text=args.text, out=args.out, resume=args.resume,
        progress=progress_flag(args.quiet), **{name: getattr(args, name) for name in OPTION_NAMES},
    )  # fmt: skip
    log = lens.training
    line = f"wrote {args.out} (tuned lens, {log.steps} steps"
    if log.heldout_kl_before and log.heldout_kl_after:
        before, after = sum(log.heldout_kl_before), sum(log.heldout_kl_after)
        line += f"; held-out KL summed over rows {before:.4g} -> {after:.4g} nats"
    print(line + ")", file=sys.stdout)
    return 0
