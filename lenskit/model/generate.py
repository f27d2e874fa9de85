"""Greedy generation with a KV cache, the continuation every view compares against."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from lenskit.errors import GenerationLengthError, InterventionError
from lenskit.model.forward_pass import (
    _batch_kwargs,
    cache_kwarg,
    eos_token_ids,
    forward,
    model_device,
    padded_batch,
)
from lenskit.requests import MAX_NEW_TOKENS

__all__ = ["greedy_generate", "greedy_generate_batch", "sample_batch"]


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


@torch.no_grad()
def greedy_generate_batch(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    eos_token_ids: Iterable[int] | None = None,
    pad_token_id: int | None = None,
) -> list[list[int]]:
    """Greedy continuations of several prompts at once (left padding, one KV cache).

    Each row equals :func:`greedy_generate` of that prompt alone: padded positions are
    masked out and position ids count each prompt's own tokens. A row stops at its first EOS
    (returned as its last token); the batch stops when every row has.

    Args:
        model: a causal LM.
        prompts: B token-id sequences of any lengths (each at least one token).
        max_new_tokens: :data:`lenskit.requests.MAX_NEW_TOKENS`.
        eos_token_ids: ids that stop a row (default: the model's generation config's).
        pad_token_id: the id put in padded slots (default: an EOS id, else 0); never read.

    Returns:
        B lists of generated ids, each ``1 <= G_b <= max_new_tokens``.
    """
    n_new = MAX_NEW_TOKENS.check(max_new_tokens, GenerationLengthError)
    return _decode_batch(
        model, prompts, n_new, lambda logits: logits.argmax(-1), eos_token_ids, pad_token_id
    )


@torch.no_grad()
def sample_batch(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: Sequence[int] | int,
    seeds: Sequence[int],
    *,
    eos_token_ids: Iterable[int] | None = None,
) -> list[list[int]]:
    """Replies sampled at temperature 1 for several prompts at once (as
    :func:`greedy_generate_batch`, with no upper limit on the length).

    Row b draws from a CPU generator seeded with ``seeds[b]``, so its reply does not depend
    on the device or on which prompts share its batch (up to float rounding of the padded
    batch). ``max_new_tokens``: one limit for all rows or one per row (each >= 1).
    """
    limits = (
        [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    )
    if len(limits) != len(prompts) or len(seeds) != len(prompts) or min(limits, default=1) < 1:
        raise InterventionError("sample_batch needs one seed and a limit >= 1 per prompt")
    gens = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

    def choose(logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float().cpu(), dim=-1)
        picks = [torch.multinomial(probs[b], 1, generator=g) for b, g in enumerate(gens)]
        return torch.cat(picks).to(logits.device)

    return _decode_batch(model, prompts, limits, choose, eos_token_ids, None)


def _decode_batch(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    limits: int | Sequence[int],
    choose: Callable[[torch.Tensor], torch.Tensor],
    eos_token_ids: Iterable[int] | None,
    pad_token_id: int | None,
) -> list[list[int]]:
    """The decode loop of a left-padded batch; ``choose(logits [B, V]) -> ids [B]``."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InterventionError("cannot generate from an empty prompt")
    limit = [limits] * len(prompts) if isinstance(limits, int) else list(limits)
    stop = set(eos_token_ids) if eos_token_ids is not None else eos_token_ids_of(model)
    pad = pad_token_id if pad_token_id is not None else min(stop, default=0)
    ids, mask, positions = padded_batch(prompts, pad, model_device(model))
    cache_name = cache_kwarg(model)
    out = forward(model, ids, n_last=1, use_cache=True, **_batch_kwargs(model, mask, positions))
    generated: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for _ in range(max(limit)):
        next_ids = choose(out.logits[:, -1])
        for b, token in enumerate(next_ids.tolist()):
            if not done[b]:
                generated[b].append(int(token))
                done[b] = token in stop or len(generated[b]) >= limit[b]
        if all(done):
            break
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        step = next_ids[:, None]
        mask = torch.cat([mask, torch.ones_like(step)], dim=1)
        positions = positions[:, -1:] + 1
        extra = _batch_kwargs(model, mask, positions)
        if cache is None:  # no cache: recompute the whole (padded) sequences
            ids = torch.cat([ids, step], dim=1)
            full_positions = (mask.cumsum(-1) - 1).clamp(min=0)
            extra = _batch_kwargs(model, mask, full_positions)
            out = forward(model, ids, n_last=1, use_cache=False, **extra)
        else:
            out = forward(model, step, n_last=1, use_cache=True, **{cache_name: cache}, **extra)
    return generated
