"""The options of tuned-lens training (:func:`lenskit.lens.train.train_lens`, ``lenskit
train-lens``): every range, default and help defined once, as in :mod:`lenskit.requests`.

Two optimisers (:data:`OPTIMIZERS`): tuned-lens's SGD with Nesterov momentum 0.9, learning
rate ``lr_scale x (1 - 0.9)`` (the default), and Adam, learning rate ``lr_scale x 1e-3``. Both
use weight decay 1e-3 (towards the zero translator, i.e. the logit lens), decay the learning
rate linearly to 0 over the run and clip the gradient norm at 1. What differs from tuned-lens
is sized for a CPU: a step reads ``positions`` positions sampled from ``sequences``
transcripts instead of tuned-lens's 2^18 tokens (docs/benchmarks.md, "Tuned lens").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from lenskit.errors import InputError
from lenskit.requests import IntOption

__all__ = [
    "CHECKPOINT_EVERY",
    "DEFAULT_OPTIMIZER",
    "OPTIMIZERS",
    "Optimizer",
    "CLIP_NORM",
    "EVAL_POSITIONS",
    "HELDOUT_PERCENT",
    "LR_SCALE",
    "MOMENTUM",
    "REPLY_TOKENS",
    "SEQ_LEN",
    "TRAIN_POSITIONS",
    "TRAIN_SEED",
    "TRAIN_SEQUENCES",
    "TRAIN_STEPS",
    "WEIGHT_DECAY",
    "check_lr_scale",
    "check_optimizer",
    "default_options",
]

TRAIN_STEPS = IntOption("steps", "Steps", 1, 1_000_000, 100, "optimiser steps")
CHECKPOINT_EVERY = IntOption(
    "checkpoint_every", "Checkpoint every", 1, None, 25,
    "steps between checkpoints in the output directory (a killed run resumes from the last)",
)  # fmt: skip
TRAIN_SEED = IntOption(
    "seed", "Seed", 0, 2**31 - 1, 0,
    "seed of the sampled replies, the held-out split and the positions of every step",
)  # fmt: skip
TRAIN_SEQUENCES = IntOption(
    "sequences", "Sequences per step", 1, 1024, 8, "transcripts (or text windows) read per step"
)
TRAIN_POSITIONS = IntOption(
    "positions", "Positions per step", 1, None, 128,
    "positions per step, sampled from the step's sequences (fits the step to the CPU)",
)  # fmt: skip
HELDOUT_PERCENT = IntOption(
    "heldout_percent", "Held-out %", 0, 50, 10,
    "share of the prompts (or text windows) held out for evaluation, fixed by the seed",
)  # fmt: skip
REPLY_TOKENS = IntOption(
    "reply_tokens", "Reply tokens", 1, 1024, 64,
    "most tokens of each sampled reply of the generated chat transcripts",
)  # fmt: skip
SEQ_LEN = IntOption(
    "seq_len", "Text window", 2, 1_000_000, 256, "tokens per window of text-file training data"
)
EVAL_POSITIONS = IntOption(
    "eval_positions", "Evaluation positions", 0, None, 512,
    "held-out positions of the KL reported before and after training (0: no evaluation)",
)  # fmt: skip

#: The learning rate is ``lr_scale`` x the optimiser's base rate.
LR_SCALE = 1.0
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-3
CLIP_NORM = 1.0


@dataclass(frozen=True)
class Optimizer:
    """One optimiser of :func:`~lenskit.lens.train.train_lens`: ``make(params, lr)``, the
    learning rate being ``lr_scale x base_lr``."""

    name: str
    base_lr: float
    make: Callable[[Iterable[torch.nn.Parameter], float], torch.optim.Optimizer]
    help: str


OPTIMIZERS: dict[str, Optimizer] = {
    "adam": Optimizer(
        "adam", 1e-3,
        lambda params, lr: torch.optim.Adam(params, lr=lr, weight_decay=WEIGHT_DECAY),
        "Adam, lr = lr_scale x 1e-3",
    ),
    "sgd": Optimizer(
        "sgd", 1 - MOMENTUM,
        lambda params, lr: torch.optim.SGD(
            params, lr=lr, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY
        ),
        "tuned-lens's (the default): SGD, Nesterov momentum 0.9, lr = lr_scale x (1 - 0.9)",
    ),
}  # fmt: skip
DEFAULT_OPTIMIZER = "sgd"


def check_lr_scale(value: object) -> float:
    """``value`` as a float if it is a number > 0, else an InputError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InputError(f"lr_scale must be a number > 0, got {value!r}")
    return float(value)


def check_optimizer(name: object) -> Optimizer:
    """The optimiser called ``name``, else an InputError listing the names."""
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise InputError(f"unknown optimizer {name!r}; choose one of {tuple(OPTIMIZERS)}")
    return OPTIMIZERS[name]


def default_options() -> dict[str, int | float | str]:
    """The default of every option of :func:`lenskit.lens.train.train_lens` by name."""
    options = (
        TRAIN_STEPS, CHECKPOINT_EVERY, TRAIN_SEED, TRAIN_SEQUENCES, TRAIN_POSITIONS,
        HELDOUT_PERCENT, REPLY_TOKENS, SEQ_LEN, EVAL_POSITIONS,
    )  # fmt: skip
    defaults: dict[str, int | float | str] = {opt.name: opt.default for opt in options}
    return {**defaults, "lr_scale": LR_SCALE, "optimizer": DEFAULT_OPTIMIZER}
