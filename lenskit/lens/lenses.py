"""Lenses: how the read-out engine turns an inner row's residual state into logits.

A lens maps the residual state ``h`` of row i (0 = embeddings, 1..L-1 = block outputs) to the
state the model's own read-out (final norm, unembedding, logit scaling) then turns into
logits. Row "out" is always the model's own logits and never goes through a lens. The logit
lens is the identity; a tuned lens (later) is ``h + W_i h + b_i``. A new lens is a subclass
and one entry in :data:`LENSES`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lenskit.errors import InputError

__all__ = [
    "LENSES",
    "Lens",
    "LogitLens",
    "check_lens",
    "get_lens",
    "lens_identity",
    "lens_name",
]


class Lens:
    """The lens interface of the read-out engine.

    Attributes:
        name: the lens's name, shown in chart titles and stored in results.
        supports_sublayers: whether the lens reads sub-block rows too (``run_lens(...,
            sublayers=True)``: row indices ``i - 0.5`` for "i.attn"); else block rows only.
    """

    name: str = "lens"
    supports_sublayers: bool = False

    @property
    def identity(self) -> str:
        """What tells this lens from another of the same name (a tuned lens: a hash of its
        parameters); a resumed dataset run must read through the same lens."""
        return self.name

    def check(self, model: Any) -> None:
        """Raise :class:`~lenskit.errors.InputError` when the lens does not fit ``model``."""

    def translate(self, states: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """States ``[..., len(rows), d]`` of the inner rows ``rows`` -> what the read-out
        normalises and unembeds, same shape."""
        raise NotImplementedError


class LogitLens(Lens):
    """The logit lens (nostalgebraist, 2020): every row read out as if it were the last."""

    name = "logit"
    supports_sublayers = True  # the identity is the same for every row

    def translate(self, states: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        return states


#: Lens names -> factories (a lens that needs files is loaded by its own function).
LENSES: dict[str, type[Lens]] = {"logit": LogitLens}


def check_lens(spec: Any) -> Any:
    """``spec`` if it is a lens object or the name of a registered lens, else an InputError
    listing the names."""
    if isinstance(spec, Lens):
        return spec
    if not isinstance(spec, str) or spec not in LENSES:
        raise InputError(f"unknown lens {spec!r}; choose one of {tuple(LENSES)}")
    return spec


def get_lens(spec: str | Lens | None) -> Lens:
    """A lens object from a name (None: the logit lens) or a lens object itself."""
    if spec is None:
        return LogitLens()
    if isinstance(spec, Lens):
        return spec
    return LENSES[check_lens(spec)]()


def lens_name(spec: str | Lens | None) -> str:
    """The name of a lens spec (None: "logit")."""
    return get_lens(spec).name


def lens_identity(spec: str | Lens | None) -> str:
    """The :attr:`Lens.identity` of a lens spec (None: "logit")."""
    return get_lens(spec).identity
