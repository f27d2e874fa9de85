"""``lenskit train-lens [DATA] [-o DIR]``: train a tuned lens for a model, into a directory.

DATA is a prompt file (``.jsonl``/``.csv``/``.txt``, default lenskit's bundled set) whose chat
transcripts the model writes itself, or with ``--text`` one or more plain text files. DIR
receives the lens (``config.json`` + ``params.pt``, tuned-lens's format, loadable at every
checkpoint), the checkpoint a killed run resumes from (``--resume``), the cached transcripts
and the held-out set (:mod:`lenskit.lens.train`). Ranges, defaults and help of the options come
from :mod:`lenskit.lens.train_options`.

Without ``-o`` the lens of lenskit's bundled prompt set goes to lenskit's cache
(:func:`~lenskit.lens.store.train_cached_lens`, under a directory keyed by the model and the
options, resuming an unfinished run there by itself); with the default options it is the lens
``--lens tuned`` loads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lenskit.cli.common import (
    CliError,
    add_int_option,
    add_model_arguments,
    load_model,
    progress_flag,
)
from lenskit.dataset import BUNDLED, FORMATS, load_prompts
from lenskit.lens.store import cached_lens, lens_cache_dir, train_cached_lens
from lenskit.lens.train import check_options, train_lens
from lenskit.lens.train_options import (
    CHECKPOINT_EVERY,
    DEFAULT_OPTIMIZER,
    EVAL_POSITIONS,
    HELDOUT_PERCENT,
    LR_SCALE,
    OPTIMIZERS,
    REPLY_TOKENS,
    SEQ_LEN,
    TRAIN_POSITIONS,
    TRAIN_SEED,
    TRAIN_SEQUENCES,
    TRAIN_STEPS,
    check_lr_scale,
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
        default=None,
        metavar="DIR",
        help="the lens directory (config.json, params.pt), with the checkpoint, the cached "
        "transcripts and the held-out set (heldout.pt). Default: lenskit's cache (the lens of "
        "the bundled prompt set; with the default options '--lens tuned' loads it; an "
        "unfinished run there resumes)",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--text", action="store_true", help="DATA are plain text files, cut into windows"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in DIR from its last checkpoint (in the cache, without -o, "
        "an unfinished run always resumes)",
    )
    for option in OPTIONS:
        add_int_option(parser, option)
    parser.add_argument(
        "--optimizer",
        choices=tuple(OPTIMIZERS),
        default=DEFAULT_OPTIMIZER,
        help="; ".join(f"{o.name}: {o.help}" for o in OPTIMIZERS.values()),
    )
    parser.add_argument(
        "--lr-scale",
        type=float,
        default=LR_SCALE,
        metavar="X",
        help=f"the learning rate in units of the optimizer's base rate (default {LR_SCALE})",
    )


def _summary(out: Path, lens: Any) -> str:
    """``"wrote DIR (tuned lens, N steps; held-out KL ...)"``."""
    log = lens.training
    line = f"wrote {out} (tuned lens, {log.steps} steps"
    if log.heldout_kl_before and log.heldout_kl_after:
        before, after = sum(log.heldout_kl_before), sum(log.heldout_kl_after)
        line += f"; held-out KL summed over rows {before:.4g} -> {after:.4g} nats"
    return line + ")"


def _train_cached(args: argparse.Namespace, options: dict[str, Any]) -> str:
    """Train into lenskit's cache (no ``-o``): the lens of the bundled set, resumed where an
    earlier run stopped; returns what to print."""
    if args.data:
        raise CliError(
            "without -o the lens goes to lenskit's cache, which holds the lens of lenskit's "
            f"bundled prompt set; to train on {', '.join(args.data)}, give -o DIR (and load "
            "it with --lens DIR)"
        )
    model, tokenizer = load_model(args)
    directory = lens_cache_dir(model, **options)
    if cached_lens(model, **options) is not None:
        line = f"already trained: {directory} (the cached lens of these options)"
    else:
        lens = train_cached_lens(model, tokenizer, progress=progress_flag(args.quiet), **options)
        line = _summary(directory, lens)
    if directory == lens_cache_dir(model):
        return f"{line}\n'--lens tuned' loads it"
    return (
        f"{line}\nthese are not the default options: '--lens tuned' loads the default options' "
        f"lens when it is trained, else the newest cached one; this one is --lens {directory}"
    )


def run_train(args: argparse.Namespace) -> int:
    if args.text and not args.data:
        raise CliError("--text needs DATA: one or more text files")
    if not args.text and len(args.data) > 1:
        raise CliError(f"give one prompt file (got {len(args.data)}); several files need --text")
    data = args.data if args.text else (args.data[0] if args.data else None)
    options: dict[str, Any] = check_options(**{name: getattr(args, name) for name in OPTION_NAMES})
    options.update(optimizer=args.optimizer, lr_scale=check_lr_scale(args.lr_scale))
    if args.out is None:
        print(_train_cached(args, options), file=sys.stdout)
        return 0
    if args.text:  # checked before the model loads (minutes for a large one)
        for path in data:
            if not Path(path).is_file():
                raise CliError(f"{path}: no such text file")
    else:
        load_prompts(data)  # a bad file or line, named, before the model loads
    model, tokenizer = load_model(args)
    lens = train_lens(
        model, tokenizer, data, text=args.text, out=args.out, resume=args.resume,
        progress=progress_flag(args.quiet), **options,
    )  # fmt: skip
    print(_summary(Path(args.out), lens), file=sys.stdout)
    return 0
