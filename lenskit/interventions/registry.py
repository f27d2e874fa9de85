"""The interventions a sweep knows: one registry entry each (name, help, edit, check).

An intervention edits block l's output at the intervened prompt positions. Its ``edit``
receives an :class:`Edit` (the block's input and output at those cells, and the clean output
at every prompt position when it needs them) and returns the new output there. Adding an
intervention is one :func:`register` call: the sweep, the result validation, the app's form and
the CLI's ``--intervention`` choices all read :data:`INTERVENTIONS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lenskit.errors import PositionSelectionError
from lenskit.requests import few, unknown_intervention

__all__ = [
    "INTERVENTIONS",
    "NOISE_SCALE",
    "Edit",
    "Intervention",
    "get_intervention",
    "register",
    "standard_noise",
]

#: "noise": expected noise norm / residual norm at each intervened position.
NOISE_SCALE = 1.0


@dataclass
class Edit:
    """What an intervention's ``edit`` sees at one block for one batch of rows.

    Attributes:
        output: ``[r, P, d]`` the block's output at the intervened cells (rows x positions).
        input: ``[r, P, d]`` the block's input there.
        positions: ``[P]`` the intervened prompt positions (absolute, ascending).
        layer: the block's index l (0-based).
        seed: the sweep's seed.
        n_prompt: T, the number of prompt tokens.
        clean_output: ``clean_output()`` is ``[r or 1, T, d]``, the block's clean output at
            every prompt position (for interventions that average over other positions).
        memo: a dict that lives as long as the hook (for per-block caches such as noise).
    """

    output: torch.Tensor
    input: torch.Tensor
    positions: torch.Tensor
    layer: int
    seed: int
    n_prompt: int
    clean_output: Callable[[], torch.Tensor]
    memo: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Intervention:
    """One intervention.

    Attributes:
        name: its name (``--intervention`` on the command line).
        help: one sentence for the app and the CLI.
        edit: ``edit(Edit) -> [r, P, d]``, the new block output at the intervened cells.
        check: ``check(positions, n_prompt)`` raises an InputError when the intervention
            cannot apply to these positions (called before any model work).
    """

    name: str
    help: str
    edit: Callable[[Edit], torch.Tensor]
    check: Callable[[Sequence[int], int], object] = lambda positions, n_prompt: None


#: Registered interventions by name, in the order the app lists them.
INTERVENTIONS: dict[str, Intervention] = {}


def register(intervention: Intervention) -> Intervention:
    """Add ``intervention`` to :data:`INTERVENTIONS` (its name must be new)."""
    if intervention.name in INTERVENTIONS:
        raise ValueError(f"intervention {intervention.name!r} is registered already")
    INTERVENTIONS[intervention.name] = intervention
    return intervention


def get_intervention(name: Any) -> Intervention:
    """The registered intervention ``name``, else an UnknownInterventionError."""
    if not isinstance(name, str) or name not in INTERVENTIONS:
        raise unknown_intervention(name, list(INTERVENTIONS))
    return INTERVENTIONS[name]


def standard_noise(seed: int, layer: int, n_prompt: int, width: int) -> torch.Tensor:
    """Standard normal ``[n_prompt, width]`` float32 for (seed, layer); row p is position p's,
    so the same seed gives the same noise whatever the batching or other positions."""
    state = np.random.SeedSequence([int(seed), int(layer)]).generate_state(2, np.uint32)
    gen = torch.Generator(device="cpu").manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return torch.randn(n_prompt, width, generator=gen, dtype=torch.float32)


def mean_sources(positions: Sequence[int], n_prompt: int) -> list[int]:
    """The positions "mean" averages: the prompt positions not intervened on, without 0."""
    chosen = set(positions)
    others = [p for p in range(1, n_prompt) if p not in chosen]
    if positions and not others:
        raise PositionSelectionError(
            "intervention 'mean' averages block l's output over the prompt positions that are "
            "not intervened on (position 0 excluded), but there are none: "
            f"prompt length {n_prompt}, positions {few(sorted(chosen))}"
        )
    return others


def _skip(edit: Edit) -> torch.Tensor:
    return edit.input


def _mean(edit: Edit) -> torch.Tensor:
    sources = mean_sources(edit.positions.tolist(), edit.n_prompt)
    full = edit.clean_output()
    index = torch.as_tensor(sources, dtype=torch.long, device=full.device)
    value = full[:, index].float().mean(dim=1, keepdim=True).to(edit.output.device)
    return value.expand_as(edit.output)


def _noise(edit: Edit) -> torch.Tensor:
    h = edit.output.float()
    rms = h.norm(dim=-1, keepdim=True) / math.sqrt(h.shape[-1])
    if "noise" not in edit.memo:
        edit.memo["noise"] = standard_noise(edit.seed, edit.layer, edit.n_prompt, h.shape[-1])
    eps = edit.memo["noise"][edit.positions.cpu()].to(h.device)  # [P, d]
    return h + NOISE_SCALE * rms * eps


register(
    Intervention(
        "skip",
        "block l's update is removed at the positions (its output equals its input there)",
        _skip,
    )
)
register(
    Intervention(
        "mean",
        "block l's output at the positions becomes its mean over the other prompt positions "
        "(position 0 excluded)",
        _mean,
        check=mean_sources,
    )
)
register(
    Intervention(
        "noise",
        f"Gaussian noise of {NOISE_SCALE:g} x the residual's norm is added to block l's output "
        "at the positions (seeded)",
        _noise,
    )
)
