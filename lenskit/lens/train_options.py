"""The options of tuned-lens training (:func:`lenskit.lens.train.train_lens`, ``lenskit
train-lens``): every range, default and help defined once, as in :mod:`lenskit.requests`.

The optimiser follows tuned-lens: SGD with Nesterov momentum 0.9, learning rate
``LR_SCALE x (1 - 0.9)``, weight decay 1e-3 (towards the zero translator, i.e. the logit
lens), the learning rate decayed linearly to 0 over the run, the gradient norm clipped at 1.
What differs is sized for a CPU: a step reads ``positions`` positions sampled from
``sequences`` transcripts instead of tuned-lens's 2^18 tokens.
"""

from __future__ import annotations

from lenskit.requests import IntOption

__all__ = [
    "CHECKPOINT_EVERY",
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
    "default_options",
]

TRAIN_STEPS = IntOption("steps", "Steps", 1, 1_000_000, 250, "optimiser steps")
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
    "positions", "Positions per step", 1, None, 256,
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

#: tuned-lens's optimiser: SGD, Nesterov momentum, lr = LR_SCALE * (1 - MOMENTUM).
LR_SCALE = 1.0
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-3
CLIP_NORM = 1.0


def default_options() -> dict[str, int | float]:
    """The default of every option of :func:`lenskit.lens.train.train_lens` by name."""
    options = (
        TRAIN_STEPS, CHECKPOINT_EVERY, TRAIN_SEED, TRAIN_SEQUENCES, TRAIN_POSITIONS,
        HELDOUT_PERCENT, REPLY_TOKENS, SEQ_LEN, EVAL_POSITIONS,
    )  # fmt: skip
    return {**{opt.name: opt.default for opt in options}, "lr_scale": LR_SCALE}
