"""Replaying blocks from a clean run: the machinery of the "prefix" sweep strategy.

Nothing before block l or before the first intervened position t0 differs from the clean run,
so a sweep row can start at its own block from the clean hidden state and cover positions
t0.. only, the earlier positions' keys/values coming from the clean run's KV cache.
:func:`_clean_run` records every block's call in the clean pass; :func:`_replay` runs blocks
again from there. Self-checks fall back to full forward passes where a model cannot be
replayed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lenskit.errors import InterventionError
from lenskit.interventions.hooks import _block_input, _first, _with_block_input
from lenskit.model.forward_pass import cache_kwarg, forward, model_device

_log = logging.getLogger(__name__)


class _ReplayCache:
    """Stands in for the KV cache when a block is re-run on the suffix positions only.

    ``update`` returns the clean keys/values of the earlier positions (expanded to the batch)
    followed by the batch's own, exactly what the real cache returned in the clean run.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys = keys
        self.values = values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = key_states.shape[0]
        keys = self.keys.expand(b, *self.keys.shape[1:]).to(key_states.dtype)
        values = self.values.expand(b, *self.values.shape[1:]).to(value_states.dtype)
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)


class _NoSplit(Exception):
    """The model's KV cache cannot be replayed block by block (use the full sequence)."""


@dataclass
class _CleanRun:
    """What the sweep needs from the clean teacher-forced pass.

    With ``split > 0`` the clean run was done in two calls, positions ``< split`` first (into a
    KV cache) and then the rest; ``calls``/``prefix_kv`` belong to the second call.
    """

    logits: torch.Tensor  # [G, V] the model's own logits at the generated positions
    split: int = 0
    calls: list[tuple[tuple, dict]] | None = None  # per block: (args, kwargs) of its call
    outputs: list[torch.Tensor] | None = None  # per block: clean output [1, T, d], all T
    cache_slots: list[tuple[str, Any]] | None = None  # where each call holds the cache
    prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per block
    chained: bool = False  # block k + 1's input is exactly block k's output


def _find_slot(args: tuple, kwargs: dict, obj: Any) -> tuple[str, Any] | None:
    for i, a in enumerate(args):
        if a is obj:
            return ("arg", i)
    for k, v in kwargs.items():
        if v is obj:
            return ("kw", k)
    return None


def _with_slot(args: tuple, kwargs: dict, slot: tuple[str, Any], value: Any) -> tuple[tuple, dict]:
    kind, key = slot
    if kind == "arg":
        args = (*args[:key], value, *args[key + 1 :])
    else:
        kwargs = {**kwargs, key: value}
    return args, kwargs


@torch.no_grad()
def _clean_run(
    model: nn.Module, blocks: nn.ModuleList, ids: torch.Tensor, n_gen: int, split: int = 0
) -> _CleanRun:
    """Clean teacher-forced pass over ``ids`` ``[1, T]`` recording every block's call.

    Raises:
        _NoSplit: ``split > 0`` and the KV cache cannot be replayed for this model.
    """
    n_blocks = len(blocks)
    calls: list[Any] = [None] * n_blocks
    outs: list[Any] = [None] * n_blocks
    current = [-1]
    thread = threading.get_ident()
    handles = []
    for i, block in enumerate(blocks):

        def pre(module: nn.Module, args: tuple, kwargs: dict, i: int = i) -> None:
            if threading.get_ident() != thread:
                return
            calls[i] = (args, dict(kwargs))
            current[0] = i

        def post(module: nn.Module, args: tuple, kwargs: dict, out: Any, i: int = i) -> None:
            if threading.get_ident() == thread:
                outs[i] = _first(out)

        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.register_forward_hook(post, with_kwargs=True))
    kv: list[list[Any]] = [[] for _ in range(n_blocks)]
    prefix_outs: list[Any] = []
    cache = None
    try:
        if split == 0:
            logits = forward(model, ids, n_last=n_gen, use_cache=False).logits[0, -n_gen:]
        else:
            first = forward(model, ids[:, :split], n_last=1, use_cache=True)
            prefix_outs = list(outs)
            calls[:] = outs[:] = [None] * n_blocks
            cache = getattr(first, "cache", None)
            if cache is None:
                cache = getattr(first, "past_key_values", None)
            if cache is None or not callable(getattr(cache, "update", None)):
                raise _NoSplit("the model returned no KV cache")
            n_suffix = ids.shape[1] - split
            real_update = cache.update

            def recording_update(key: torch.Tensor, value: torch.Tensor, *a: Any, **kw: Any) -> Any:
                keys, values = real_update(key, value, *a, **kw)
                keep = keys.shape[-2] - n_suffix
                kv[current[0]].append((keys[..., :keep, :], values[..., :keep, :]))
                return keys, values

            cache.update = recording_update
            extra = {cache_kwarg(model): cache, "use_cache": True}
            logits = forward(model, ids[:, split:], n_last=n_gen, **extra).logits[0, -n_gen:]
    finally:
        for h in handles:
            h.remove()
        if cache is not None:
            cache.__dict__.pop("update", None)
    if any(x is None for x in (*calls, *outs, *prefix_outs)):
        return _CleanRun(logits)  # some block was not called as a module: no replay
    chained = all(
        _block_input(*calls[k + 1]) is outs[k] or torch.equal(_block_input(*calls[k + 1]), outs[k])
        for k in range(n_blocks - 1)
    )
    run = _CleanRun(logits, split=split, calls=calls, outputs=outs, chained=chained)
    if split:
        slots = [_find_slot(*calls[k], cache) for k in range(n_blocks)]
        if any(s is None for s in slots) or any(len(r) != 1 for r in kv):
            raise _NoSplit("the blocks do not each update the KV cache once")
        run.cache_slots = slots
        run.prefix_kv = [r[0] for r in kv]
        run.outputs = [torch.cat([p, o], dim=1) for p, o in zip(prefix_outs, outs, strict=True)]
    return run


def _replay(
    blocks: nn.ModuleList, clean: _CleanRun, first_block: int, joining: Sequence[int]
) -> torch.Tensor:
    """Run blocks ``first_block..L-1`` on a batch that grows by one clean row at each block in
    ``joining`` (the row starts from that block's clean input). Returns the last block's
    output ``[B, T - split, d]``; hooks on the blocks see every call."""
    hidden = None
    joining = set(joining)
    for k in range(first_block, len(blocks)):
        args, kwargs = clean.calls[k]
        if k in joining:
            h0 = _block_input(args, kwargs)
            hidden = h0 if hidden is None else torch.cat([hidden, h0], dim=0)
        b_args, b_kwargs = _with_block_input(args, kwargs, hidden)
        if clean.split:
            cache = _ReplayCache(*clean.prefix_kv[k])
            b_args, b_kwargs = _with_slot(b_args, b_kwargs, clean.cache_slots[k], cache)
        hidden = _first(blocks[k](*b_args, **b_kwargs))
    return hidden


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the rounding of their dtype (a self-check, not a test of the maths)."""
    if a.shape != b.shape:
        return False
    tol = 1e-4 if a.dtype == b.dtype == torch.float32 else 3e-2
    scale = float(b.float().abs().max()) + 1.0
    return torch.allclose(a.float(), b.float(), rtol=tol, atol=tol * scale)


@torch.no_grad()
def _prefix_clean_run(
    model: nn.Module,
    blocks: nn.ModuleList,
    readout: Callable[[torch.Tensor], torch.Tensor] | None,
    ids: torch.Tensor,
    n_gen: int,
    split: int,
) -> _CleanRun | None:
    """A clean run that the "prefix" strategy can replay, or None when this model cannot."""
    if readout is None:
        return None
    clean = None
    if split:
        try:
            clean = _clean_run(model, blocks, ids, n_gen, split)
            # Self-test: replaying the last block on the clean suffix must give its output.
            last = len(blocks) - 1
            if not clean.chained or not _close(
                _replay(blocks, clean, last, [last]), clean.outputs[last][:, split:]
            ):
                clean = None
        except _NoSplit as exc:
            _log.info("KV-cache replay unavailable (%s); replaying full sequences", exc)
            clean = None
    if clean is None:
        clean = _clean_run(model, blocks, ids, n_gen, 0)
    if not clean.chained or clean.outputs is None:
        return None
    if not _close(readout(clean.outputs[-1][:, -n_gen:])[0], clean.logits):
        _log.warning("the read-out does not reproduce the model's logits; no 'prefix' sweep")
        return None
    return clean


def _auto_batch_size(model: nn.Module, seq_len: int, kv_len: int, n_layers: int) -> int:
    """Rows per forward pass so that the activations of ``seq_len`` query positions (over
    ``kv_len`` key positions) stay within a memory budget."""
    cfg = getattr(model, "config", None)
    d = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0) or 1024)
    ff = int(getattr(cfg, "intermediate_size", 0) or getattr(cfg, "ffn_dim", 0) or 4 * d)
    heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_head", 0) or 16)
    param = next(model.parameters(), None)
    elem = param.element_size() if param is not None else 4
    per_row = seq_len * (8 * d + 3 * ff + 2 * heads * kv_len) * elem
    device = model_device(model)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // 4
    else:
        budget = 512 * 2**20
    return max(1, min(n_layers, int(budget // max(1, per_row))))


def _prepare_clean(
    model: nn.Module,
    blocks: nn.ModuleList,
    readout: Callable[[torch.Tensor], torch.Tensor] | None,
    ids: torch.Tensor,
    n_gen: int,
    positions: list[int],
    strategy: str,
) -> tuple[str, _CleanRun]:
    """The clean run and the strategy actually used ("auto" resolved)."""
    clean = None
    if strategy in ("auto", "prefix"):
        clean = _prefix_clean_run(model, blocks, readout, ids, n_gen, split=min(positions))
        if clean is None and strategy == "prefix":
            raise InterventionError(
                "strategy 'prefix' needs blocks that feed each other directly and a read-out "
                "that reproduces the model's logits; use 'batched'"
            )
        strategy = "prefix" if clean is not None else "batched"
    if clean is None:
        clean = _clean_run(model, blocks, ids, n_gen, 0)
    return strategy, clean
