"""THE read-out engine: hidden state at row i -> logits -> per-cell statistics, streamed.

Rows (R = L + 1, L = number of decoder blocks): row 0 "emb" = ``hidden_states[0]`` read out;
row i in 1..L-1 = the output of block i (``decoder_layers(model)[i - 1]``) read out; row L
"out" = the model's own logits, exactly (Hugging Face's last hidden state is already normed:
it is only unembedded). Inner rows go through the lens, then the model's read-out (final
norm, unembedding, logit scaling / soft-capping); see docs/architecture.md.

With ``sublayers=True`` (R = 2L + 1) a sub-block row "i.attn" precedes each block row i: the
residual stream inside 1-based block i after its attention and before its MLP, captured by
hooks during the same forward pass (:func:`~lenskit.model.architecture.attention_site`):
rows ``emb, 1.attn, 1, 2.attn, 2, ..., L-1, L.attn, out``.

The read-out streams over chunks of positions, so at most ``chunk x R x V`` logits exist at
a time; each chunk is reduced to entropy, KL(out || row), top-k and target statistics by the
fused ops. Every view (run_lens, the lens over a generation, layer x layer KL, dataset mode)
reads out through :class:`ReadoutEngine`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
import torch

from lenskit.errors import InputError, ReadoutError
from lenskit.lens.lenses import Lens, get_lens
from lenskit.model.architecture import (
    AttentionSite,
    attention_site,
    decoder_layers,
    find_readout,
    vocabulary_mismatch,
)
from lenskit.model.forward_pass import hidden_states_forward, model_device, padded_batch
from lenskit.ops import count_above, entropy_lse, kl_div
from lenskit.progress import Progress, silent

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "ReadoutEngine",
    "blocked_topk",
    "layer_names",
    "lens_rows",
    "supports_sublayers",
]

#: Bytes of fp32 logits per read-out chunk when ``chunk_size`` is not given (the default
#: model's 31 rows x ~44 positions: one chunk for short prompts, bounded for long ones).
DEFAULT_CHUNK_BYTES = 256 << 20


def layer_names(n_layers: int, sublayers: bool = False) -> list[str]:
    """Row labels for L decoder blocks: ``["emb", "1", ..., "L-1", "out"]`` (R = L + 1); with
    ``sublayers``, ``["emb", "1.attn", "1", ..., "L-1", "L.attn", "out"]`` (R = 2L + 1), where
    "i.attn" is the residual stream inside 1-based block i after its attention."""
    if not sublayers:
        return ["emb", *[str(i) for i in range(1, n_layers)], "out"]
    names = ["emb"]
    for i in range(1, n_layers + 1):
        names += [f"{i}.attn", str(i) if i < n_layers else "out"]
    return names


def lens_rows(n_layers: int, sublayers: bool = False) -> list[int | float]:
    """The row positions a lens's ``translate(states, rows)`` gets for the inner rows.

    Block rows are ints: 0 (emb) .. L-1, the index into ``hidden_states``. With ``sublayers``
    the sub-block row "i.attn" (inside 1-based block i, between rows i-1 and i) is the float
    ``i - 0.5``, so a lens tells the two kinds apart (``isinstance(r, float)``):
    ``[0, 0.5, 1, 1.5, ..., L-1, L-0.5]``.
    """
    if not sublayers:
        return list(range(n_layers))
    rows: list[int | float] = []
    for i in range(n_layers):
        rows += [i, i + 0.5]
    return rows


def supports_sublayers(lens: Lens) -> bool:
    """Whether ``lens`` reads sub-block rows (:attr:`Lens.supports_sublayers`)."""
    return bool(getattr(lens, "supports_sublayers", False))


def blocked_topk(z: torch.Tensor, k: int, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``z [M, V]`` along the last dim, (values, ids), largest first.

    On CPU ``torch.topk`` over a long row is ~6x slower than one vectorised ``amax``; the k
    largest values always lie in the k blocks with the largest maxima (a block holding one
    of them has a maximum >= the k-th value, and at most k blocks can), so rank block maxima
    first and run the exact topk on those k blocks (plus the ragged tail) only.
    """
    m, v = z.shape
    n_blocks = v // block
    if z.device.type != "cpu" or n_blocks <= 2 * k:
        return torch.topk(z, k, dim=-1)
    body = n_blocks * block
    block_max = z[:, :body].view(m, n_blocks, block).amax(dim=-1)
    best_blocks = torch.topk(block_max, k, dim=-1).indices  # [M, k]
    offsets = torch.arange(block, device=z.device)
    idx = (best_blocks[:, :, None] * block + offsets).view(m, k * block)
    if body < v:  # the tail that does not fill a block is always a candidate
        tail = torch.arange(body, v, device=z.device).expand(m, v - body)
        idx = torch.cat([idx, tail], dim=1)
    vals, j = torch.topk(torch.gather(z, 1, idx), k, dim=-1)
    return vals, torch.gather(idx, 1, j)


def _chunk_stats(
    z: torch.Tensor, k: int, targets: Sequence[int | Sequence[int]]
) -> dict[str, torch.Tensor]:
    """Statistics of one chunk of read-out logits ``z [P, R, V]`` (row R-1 is "out" at each
    of the P positions): fused entropy + log-normaliser, fused KL to the out row, one
    block-max top-k; the log-normaliser gives the top-k and target probabilities."""
    p, r, v = z.shape
    flat = z.view(p * r, v)
    ent, lse = entropy_lse(flat)
    ent = ent.view(p, r)
    lse = lse.view(p, r)
    top_vals, top_ids = blocked_topk(flat, k)
    z_out = z[:, r - 1, :]
    # Per position: its out row broadcast (stride 0, no copy) against the position's R rows.
    kl = torch.stack([kl_div(z_out[i].expand(r, v), z[i]) for i in range(p)])
    bad = ~torch.isfinite(lse)
    if bool(bad.any()):  # all -inf, NaN or +inf rows: the fused lse is NaN there
        lse[bad] = torch.logsumexp(flat.view(p, r, v)[bad].float(), dim=-1)
    # Rounding can put lse a hair below the top logit: keep probabilities <= 1.
    lse = torch.maximum(lse, top_vals[:, 0].float().view(p, r))
    stats = {
        "entropy": ent,
        "kl_to_final": kl,
        "top_ids": top_ids.view(p, r, k),
        "top_probs": torch.exp(top_vals.float().view(p, r, k) - lse[:, :, None]),
    }
    if len(targets):
        zt = torch.stack([_target_logit(flat, t) for t in targets], dim=-1)  # [P*R, n]
        stats["target_prob"] = torch.exp(zt.float().view(p, r, -1) - lse[:, :, None])
        # Ranks: how many logits beat each target's, all targets in one read of the chunk.
        stats["target_rank"] = count_above(flat, zt).view(p, r, -1)
    return stats


def _target_logit(flat: torch.Tensor, target: int | Sequence[int]) -> torch.Tensor:
    """Each row's logit of ``target``; for a group of ids, the largest of theirs (the
    best-ranked member: one rank to count instead of one per member)."""
    if isinstance(target, (int, np.integer)):
        return flat[:, int(target)]
    ids = torch.as_tensor(list(target), dtype=torch.long, device=flat.device)
    return flat[:, ids].amax(dim=-1)


class ReadoutEngine:
    """The read-out of one model through one lens.

    Args:
        model: a causal LM (any device / dtype).
        lens: a :class:`~lenskit.lens.lenses.Lens` or its name (None: the logit lens).
        tokenizer: when given, checked against the model's vocabulary.
        sublayers: add the sub-block rows "i.attn" (see :func:`layer_names`); then
            :meth:`forward` / :meth:`forward_batch` return the 2L + 1 states in row order.

    Raises:
        ReadoutError: the architecture's blocks or read-out cannot be found.
        InputError: the lens or the tokenizer does not fit the model; with ``sublayers``, the
            blocks have no point after attention and before the MLP (parallel blocks), the
            family is unknown, or the lens reads block rows only.
    """

    def __init__(
        self,
        model: Any,
        lens: Lens | str | None = None,
        tokenizer: Any = None,
        *,
        sublayers: bool = False,
    ):
        self.model = model
        self.readout = find_readout(model)
        self.n_layers = len(decoder_layers(model))
        self.lens = get_lens(lens)
        self.lens.check(model)
        self.sublayers = bool(sublayers)
        self.site: AttentionSite | None = attention_site(model) if self.sublayers else None
        if self.sublayers and not supports_sublayers(self.lens):
            raise InputError(
                f"The {self.lens.name} lens reads block rows only: it has no translator for "
                "the sub-block rows (after attention). Run without sublayers, or use the "
                "logit lens."
            )
        mismatch = vocabulary_mismatch(model, tokenizer)
        if mismatch is not None:
            raise InputError(f"This model and tokenizer do not fit: {mismatch}")

    @property
    def n_rows(self) -> int:
        """R = L + 1 (2L + 1 with sub-block rows)."""
        return 2 * self.n_layers + 1 if self.sublayers else self.n_layers + 1

    @property
    def vocab_size(self) -> int:
        """V, the number of logits per cell."""
        return self.readout.vocab_size

    @property
    def row_names(self) -> list[str]:
        return layer_names(self.n_layers, self.sublayers)

    @property
    def lens_rows(self) -> list[int | float]:
        """What the lens's ``translate`` gets for the inner rows (:func:`lens_rows`)."""
        return lens_rows(self.n_layers, self.sublayers)

    def forward(
        self, input_ids: Sequence[int] | torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """One forward pass: ``(hidden_states [R x [B, T, d]], model logits at the last
        position [B, V])``; ``input_ids`` is ``[T]`` or ``[B, T]``. With sub-block rows the
        states are in row order (``emb, 1.attn, 1, ..., L.attn, out``)."""
        ids = torch.as_tensor(input_ids, dtype=torch.long, device=model_device(self.model))
        ids = ids.reshape(1, -1) if ids.dim() == 1 else ids
        self._check_ids(ids)
        with torch.inference_mode(), self._capture() as mids:
            hidden, last = hidden_states_forward(self.model, ids, attention_mask)
        self._check_rows(hidden)
        return self._with_sublayers(hidden, mids), last

    def forward_batch(
        self, sequences: Sequence[Sequence[int]], pad_id: int
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, list[int]]:
        """One forward pass over several prompts, left-padded: ``(hidden_states, model logits
        at the last position [B, V], offsets)``; position p of sequence b is column
        ``offsets[b] + p`` of the hidden states."""
        for seq in sequences:
            self._check_ids(torch.as_tensor(list(seq), dtype=torch.long))
        ids, mask, positions = padded_batch(sequences, pad_id, model_device(self.model))
        with torch.inference_mode(), self._capture() as mids:
            hidden, last = hidden_states_forward(self.model, ids, mask, positions)
        self._check_rows(hidden)
        width = ids.shape[1]
        return self._with_sublayers(hidden, mids), last, [width - len(seq) for seq in sequences]

    @contextmanager
    def _capture(self) -> Iterator[list[torch.Tensor | None]]:
        """With sub-block rows: hooks that fill one residual state after attention per block
        (block input by a forward pre-hook, the attention output by a forward hook on the
        attention module, combined by the family's formula); else nothing."""
        mids: list[torch.Tensor | None] = [None] * self.n_layers
        if self.site is None:
            yield mids
            return
        site, blocks = self.site, decoder_layers(self.model)
        inputs: list[torch.Tensor | None] = [None] * self.n_layers
        thread = threading.get_ident()  # other threads' passes through the model: ignored

        def block_in(i: int, module: Any, args: tuple, kwargs: dict) -> None:
            if threading.get_ident() == thread:
                inputs[i] = args[0] if args else kwargs["hidden_states"]

        def attn_out(i: int, module: Any, args: tuple, output: Any) -> None:
            if threading.get_ident() == thread and inputs[i] is not None:
                out = output[0] if isinstance(output, (tuple, list)) else output
                mids[i] = site.residual(blocks[i], inputs[i], out)
                inputs[i] = None

        handles = []
        try:
            for i, block in enumerate(blocks):
                handles.append(
                    block.register_forward_pre_hook(partial(block_in, i), with_kwargs=True)
                )
                handles.append(site.module(block).register_forward_hook(partial(attn_out, i)))
            yield mids
        finally:
            for handle in handles:
                handle.remove()

    def _with_sublayers(
        self, hidden: tuple[torch.Tensor, ...], mids: list[torch.Tensor | None]
    ) -> tuple[torch.Tensor, ...]:
        """``hidden`` (L + 1 states) with the captured sub-block states in row order."""
        if not self.sublayers:
            return hidden
        missing = [i for i, m in enumerate(mids) if m is None]
        if missing:
            raise ReadoutError(
                f"{self.readout.architecture}: the attention of blocks {missing} did not run "
                "through its hooks, so their sub-block rows cannot be read."
            )
        rows: list[torch.Tensor] = [hidden[0]]
        for i, mid in enumerate(mids):
            rows += [mid, hidden[i + 1]]  # type: ignore[list-item]
        return tuple(rows)

    def _check_ids(self, ids: torch.Tensor) -> None:
        too_big = int(ids.max()) if ids.numel() else -1
        if too_big >= self.vocab_size:
            raise InputError(
                f"token id {too_big} is outside the model's vocabulary of {self.vocab_size}: "
                "the tokenizer does not belong to this model."
            )

    def _check_rows(self, hidden: Sequence[torch.Tensor]) -> None:
        if len(hidden) != self.n_layers + 1:
            raise ReadoutError(
                f"{self.readout.architecture} returned {len(hidden)} hidden states for "
                f"{self.n_layers} decoder blocks (expected {self.n_layers + 1})"
            )

    def _states(
        self, hidden: Sequence[torch.Tensor], batch: int, positions: Sequence[int]
    ) -> torch.Tensor:
        """Read-out input ``[P, R, d]`` at ``positions`` of batch row ``batch``: inner rows
        through the lens (rows :attr:`lens_rows`) and the final norm, the last row (already
        normed) as it is."""
        device = self.readout.unembed.weight.device
        index = torch.as_tensor(list(positions), dtype=torch.long)
        inner = torch.stack([h[batch, index.to(h.device)].to(device) for h in hidden[:-1]], 1)
        inner = self.lens.translate(inner, self.lens_rows)
        final = hidden[-1][batch, index.to(hidden[-1].device)].to(device)
        return torch.cat([self.readout.normalize(inner), final[:, None, :]], dim=1)

    def row_logits(
        self, hidden: Sequence[torch.Tensor], positions: Sequence[int], batch: int = 0
    ) -> torch.Tensor:
        """Logits ``[P, R, V]`` of every row at ``positions`` (row "out" = model logits)."""
        with torch.inference_mode():
            return self.readout.final_logits(self._states(hidden, batch, positions))

    def statistics(
        self,
        hidden: Sequence[torch.Tensor],
        *,
        top_k: int,
        targets: Sequence[int | Sequence[int]] = (),
        positions: Sequence[int] | None = None,
        batch: int = 0,
        chunk_size: int | None = None,
        report: Progress = silent,
    ) -> dict[str, np.ndarray]:
        """Per-cell statistics at ``positions`` (default: all) of batch row ``batch``.

        Returns numpy arrays ``entropy``/``kl_to_final`` ``[R, P]`` (nats), ``top_ids`` /
        ``top_probs`` ``[R, P, k]``, with ``targets``: ``target_prob`` / ``target_rank``
        ``[R, P, n_targets]`` (a target that is a group of ids counts as its best-ranked
        member: its rank and that member's probability); and ``last_out_logits``, row "out" at the last position read
        (for :meth:`check_out_row`).
        """
        pos = list(range(hidden[0].shape[1])) if positions is None else [int(p) for p in positions]
        n_pos, n_rows, vocab = len(pos), self.n_rows, self.vocab_size
        if chunk_size is None:
            chunk_size = max(1, DEFAULT_CHUNK_BYTES // (4 * vocab))
        step = max(1, chunk_size // n_rows)  # whole positions: each needs its own "out" row
        # Equal chunks: a small remainder chunk would re-read the whole unembedding for little.
        n_chunks = max(1, -(-n_pos // step))
        step = max(1, -(-n_pos // n_chunks))
        out: dict[str, list[torch.Tensor]] = {}
        last_out = None
        buffer: list[torch.Tensor | None] = [None]
        with torch.inference_mode():
            for start in range(0, n_pos, step):
                chunk = pos[start : start + step]
                z = self._chunk_logits(self._states(hidden, batch, chunk), step, buffer)
                for name, value in _chunk_stats(z, top_k, targets).items():
                    out.setdefault(name, []).append(value.cpu())
                last_out = z[-1, -1].float().clone()
                report(
                    min(n_pos, start + step) / n_pos,
                    f"Read-out {start + len(chunk)}/{n_pos} positions",
                )
        result = {  # [P, R, ...] chunks -> [R, P, ...]
            name: torch.cat(chunks, dim=0).transpose(0, 1).contiguous().numpy()
            for name, chunks in out.items()
        }
        result["kl_to_final"][-1] = 0.0  # KL of the out row to itself, exactly
        result["last_out_logits"] = last_out
        return result

    def _chunk_logits(
        self, x: torch.Tensor, step: int, buffer: list[torch.Tensor | None]
    ) -> torch.Tensor:
        """Logits ``[P, R, V]`` of read-out input ``x [P, R, d]``, into a reused buffer."""
        unembed = self.readout.unembed
        if not isinstance(unembed, torch.nn.Linear):
            return self.readout.transform(unembed(x))
        weight = unembed.weight
        n = x.shape[0] * x.shape[1]
        # One buffer for all chunks: a fresh [chunk, V] allocation per chunk costs page faults
        # on every chunk (~15% of the GEMM on the default model).
        if buffer[0] is None:
            buffer[0] = torch.empty(
                step * self.n_rows, self.vocab_size, dtype=weight.dtype, device=weight.device
            )
        z = torch.mm(x.reshape(n, -1).to(weight.dtype), weight.T, out=buffer[0][:n])
        z = z.view(*x.shape[:2], self.vocab_size)
        if unembed.bias is not None:
            z += unembed.bias
        return self.readout.transform(z, inplace=True)

    def check_out_row(self, ours: torch.Tensor, model_last: torch.Tensor) -> None:
        """Row "out" must equal the model's own logits; a mismatch means an unknown logit
        transform (scaling/capping) that the read-out does not reproduce."""
        readout = self.readout
        theirs = model_last.float().to(ours.device)
        if theirs.shape != ours.shape:
            raise ReadoutError(
                f"{readout.architecture}: the unembedding gives {ours.shape[-1]} logits but the "
                f"model returns {theirs.shape[-1]}"
            )
        tol = (1e-4 if model_last.dtype == torch.float32 else 3e-2) * (
            1.0 + theirs.abs().max().item()
        )
        err = (ours - theirs).abs().max().item()
        if not err <= tol:
            raise ReadoutError(
                f"{readout.architecture}: reading the last hidden state out through the "
                f"unembedding (softcap={readout.softcap}, scale={readout.scale}) differs from "
                f"the model's own logits by {err:.3g} (> {tol:.3g}); this architecture applies "
                "a logit transform lenskit does not know."
            )
