"""The one forward helper: a model's forward pass, asking only for what its forward accepts.

``logits_to_keep`` (logits for the last n positions only, so ``[B, T, V]`` logits are never
materialised) is passed only where the model's ``forward`` names it; the signature is read
once per model. A forward pass is never retried on an exception: an error inside the model
surfaces as it is.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "accepts",
    "cache_kwarg",
    "eos_token_ids",
    "forward",
    "hidden_states_forward",
    "ids_list",
    "model_device",
    "model_logits",
    "padded_batch",
]

_SIGNATURES: weakref.WeakKeyDictionary[nn.Module, frozenset[str]] = weakref.WeakKeyDictionary()


def _named_parameters(model: nn.Module) -> frozenset[str]:
    names = _SIGNATURES.get(model)
    if names is None:
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):  # a builtin or C-level forward: no names to read
            params = {}
        names = frozenset(
            n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        )
        _SIGNATURES[model] = names
    return names


def accepts(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` names the keyword ``name`` (``**kwargs`` does not count)."""
    return name in _named_parameters(model)


def cache_kwarg(model: nn.Module) -> str:
    """The keyword under which ``model.forward`` takes a KV cache."""
    return "cache" if accepts(model, "cache") else "past_key_values"


def model_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter lives (its input ids go there)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def forward(
    model: nn.Module, input_ids: torch.Tensor, *, n_last: int | None = None, **kwargs: Any
) -> Any:
    """``model(input_ids=..., **kwargs)``; with ``n_last``, logits are asked for the last
    ``n_last`` positions only where the model supports it. Callers slice
    ``.logits[:, -n_last:]`` either way."""
    if n_last is not None and accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = n_last
    return model(input_ids=input_ids, **kwargs)


def model_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    n_last: int,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The model's own logits at the last ``n_last`` positions: ``[B, n_last, V]`` (a
    left-padded batch passes its mask and position ids, :func:`padded_batch`)."""
    extra = _batch_kwargs(model, attention_mask, position_ids)
    out = forward(model, input_ids, n_last=n_last, use_cache=False, **extra)
    return out.logits[:, -n_last:]


def padded_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ``(input_ids, attention_mask, position_ids)``, each ``[B, T_max]``.

    Left padding keeps every sequence's last token in the last column (where generation
    continues); position ids count each sequence's own tokens from 0, so a padded row sees
    the same positions as the sequence alone.
    """
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if len(seq):
            ids[i, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[i, width - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def _batch_kwargs(
    model: nn.Module, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    extra = {} if attention_mask is None else {"attention_mask": attention_mask}
    if position_ids is not None and accepts(model, "position_ids"):
        extra["position_ids"] = position_ids
    return extra


def hidden_states_forward(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """One forward pass: ``(hidden_states, logits at the last position [B, V])``.

    ``hidden_states`` has L + 1 entries ``[B, T, d]``: the embeddings, then each block's
    output, the last one already through the final norm (as Hugging Face returns it). A
    left-padded batch passes its ``attention_mask`` and ``position_ids`` (:func:`padded_batch`).
    """
    extra = _batch_kwargs(model, attention_mask, position_ids)
    out = forward(
        model,
        input_ids,
        n_last=1,
        output_hidden_states=True,
        use_cache=False,
        return_dict=True,
        **extra,
    )
    return out.hidden_states, out.logits[:, -1]


def eos_token_ids(model: nn.Module, tokenizer: Any = None) -> set[int]:
    """EOS ids that stop generation: the generation config's (as ``model.generate``), else
    the model config's, else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple, set)) else [eos])}


def ids_list(ids: torch.Tensor | Sequence[int] | Iterable[int]) -> list[int]:
    """Token ids of any 1-d container as a list of ints."""
    if isinstance(ids, torch.Tensor):
        return [int(i) for i in ids.reshape(-1).tolist()]
    return [int(i) for i in ids]
