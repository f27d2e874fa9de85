"""Greedy generation with a KV cache, the continuation every view compares against."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from lenskit.errors import GenerationLengthError, InterventionError
from lenskit.model.forward_pass import cache_kwarg, eos_token_ids, forward, model_device
from lenskit.requests import MAX_NEW_TOKENS

__all__ = ["greedy_generate"]


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    input_ids: torch.Tensor | Sequence[int],
    max_new_tokens: int,
    *,
    eos_token_ids: Iterable[int] | None = None,
) -> list[int]:
    """Greedy (argmax) continuation of a prompt, with a KV cache.

    Equals ``model.generate(input_ids, do_sample=False, max_new_tokens=...)`` without any
    logits processors (no repetition penalty etc.): exactly ``max_new_tokens`` tokens unless
    an EOS token comes first, which is then the last token returned.

    Args:
        model: a causal LM (``model(input_ids).logits``).
        input_ids: ``[T]`` or ``[1, T]`` prompt token ids.
        max_new_tokens: :data:`lenskit.requests.MAX_NEW_TOKENS`.
        eos_token_ids: ids that stop generation (default: the model's generation config's
            ``eos_token_id``).

    Returns:
        The G generated token ids, ``1 <= G <= max_new_tokens``.
    """
    n_new = MAX_NEW_TOKENS.check(max_new_tokens, GenerationLengthError)
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=model_device(model)).reshape(1, -1)
    if ids.shape[1] == 0:
        raise InterventionError("cannot generate from an empty prompt")
    stop = set(eos_token_ids) if eos_token_ids is not None else eos_token_ids_of(model)
    cache_name = cache_kwarg(model)
    out = forward(model, ids, n_last=1, use_cache=True)
    generated: list[int] = []
    while True:
        next_id = int(out.logits[0, -1].argmax())
        generated.append(next_id)
        if len(generated) >= n_new or next_id in stop:
            return generated
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        step = torch.tensor([[next_id]], dtype=torch.long, device=ids.device)
        ids = torch.cat([ids, step], dim=1)
        if cache is None:  # a model without a cache: recompute the whole sequence
            out = forward(model, ids, n_last=1, use_cache=False)
        else:
            out = forward(model, step, n_last=1, use_cache=True, **{cache_name: cache})


def eos_token_ids_of(model: nn.Module) -> set[int]:
    """The EOS ids of the model's generation config (see :func:`eos_token_ids`)."""
    return eos_token_ids(model, None)
