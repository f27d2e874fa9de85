"""The forward hook that applies a registered intervention to one block's output."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lenskit.interventions.registry import Edit, Intervention


def _first(output: Any) -> torch.Tensor:
    """The hidden state of a block's output (blocks return a tensor or a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _replace_first(output: Any, hidden: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    return hidden


def _block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_block_input(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


class _InterventionHook:
    """Forward hook on one block: applies ``intervention`` to rows ``rows`` of its output at
    prompt ``positions``.

    Registered with ``with_kwargs=True``; handles blocks returning a tensor or a tuple. The
    block may see only the positions from ``offset`` on (the earlier ones then come from a
    KV cache): ``positions`` are absolute, local index = position - offset. ``clean_output``
    (``[1, T, d]``, the block's clean output at every prompt position) stands in for what
    the block does not see; without it the block's own output is used (offset 0).
    """

    def __init__(
        self,
        intervention: Intervention,
        positions: torch.Tensor,
        rows: torch.Tensor | None,
        *,
        layer: int,
        seed: int,
        n_prompt: int,
        offset: int = 0,
        clean_output: torch.Tensor | None = None,
    ) -> None:
        self.intervention = intervention
        self.positions = positions
        self.local = positions - offset
        self.rows = rows
        self.layer, self.seed, self.n_prompt = layer, seed, n_prompt
        self.clean = clean_output
        self.thread = threading.get_ident()  # other threads' passes through the block: no-op
        self.memo: dict[str, Any] = {}

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if threading.get_ident() != self.thread:
            return None
        hidden = _first(output)
        dev = hidden.device  # with a device_map, blocks live on several GPUs
        rows = torch.arange(hidden.shape[0], device=dev) if self.rows is None else self.rows.to(dev)
        local = self.local.to(dev)
        r_idx, p_idx = rows[:, None], local[None, :]
        h_in = _block_input(args, kwargs)
        full: Callable[[], torch.Tensor] = (
            (lambda: hidden[rows]) if self.clean is None else (lambda: self.clean)
        )
        edit = Edit(
            output=hidden[r_idx, p_idx],
            input=h_in[r_idx, p_idx],
            positions=self.positions,
            layer=self.layer,
            seed=self.seed,
            n_prompt=self.n_prompt,
            clean_output=full,
            memo=self.memo,
        )
        new = hidden.clone()
        new[r_idx, p_idx] = self.intervention.edit(edit).to(new.dtype)
        return _replace_first(output, new)
