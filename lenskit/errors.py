"""lenskit's exceptions: one root, and a user's mistakes told apart from bugs.

* :class:`LenskitError` is the root of every exception lenskit raises on purpose.
* :class:`InputError` (also a ``ValueError``) is a mistake in what a user typed or passed: a
  prompt, a target, layers, positions, lengths, a file. Its message says what was wrong and
  what to do. The app shows it as a message; the CLI prints it on one line and exits 2.
* :class:`ModelLoadError` and :class:`ReadoutError` (also ``RuntimeError``) say that a model
  cannot be loaded or read out; the message says what was tried and what to do.

Anything else that escapes lenskit is a bug and surfaces as one.
"""

from __future__ import annotations

__all__ = [
    "GenerationLengthError",
    "InputError",
    "InterventionError",
    "LayerSelectionError",
    "LenskitError",
    "ModelLoadError",
    "PositionSelectionError",
    "PromptError",
    "ReadoutError",
    "TargetError",
    "UnknownInterventionError",
]


class LenskitError(Exception):
    """Root of every exception lenskit raises on purpose."""


class InputError(LenskitError, ValueError):
    """A user's mistake in what was typed or passed; the message says what to do."""


class ModelLoadError(LenskitError, RuntimeError):
    """A model or tokenizer could not be loaded; the message says what was tried and what to do."""


class ReadoutError(LenskitError, RuntimeError):
    """The final norm / unembedding of an architecture could not be found or does not
    reproduce the model's own logits."""


class PromptError(InputError):
    """The prompt cannot be encoded as asked (empty, too long, no chat template ...)."""


class TargetError(InputError):
    """The target is not exactly one token of the model's vocabulary."""


class InterventionError(InputError):
    """Bad input to an intervention function (base class of the specific errors)."""


class LayerSelectionError(InterventionError):
    """Empty layer selection, or a block index outside ``0..L-1``."""


class PositionSelectionError(InterventionError):
    """Unknown position mode, a position outside the prompt, or no positions to average."""


class UnknownInterventionError(InterventionError):
    """The intervention is not one of the registered interventions."""


class GenerationLengthError(InterventionError):
    """``max_new_tokens`` outside its range, or prompt + generation past the context."""
