"""Logit lens: read every layer's hidden state out through the final norm and unembedding.

Rows (R = L + 1, L = number of decoder blocks): row 0 "emb" = hidden_states[0] read out;
row i in 1..L-1 = output of block i read out; row L "out" = the model's own logits, exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from lenskit._results import ResultRecord
from lenskit.models import (
    Readout,
    ReadoutError,
    context_length,
    decoder_layers,
    find_readout,
    model_name,
    progress_reporter,
)
from lenskit.ops import entropy_lse, kl_div
from lenskit.prompts import PromptError, check_text, encode_prompt
from lenskit.tokens import byte_level_vocabulary, format_token

__all__ = ["LensResult", "TargetError", "layer_names", "run_lens", "target_token_id"]

#: Units of the float fields, for labels and exports.
UNITS = {
    "entropy": "nats",
    "kl_to_final": "nats",
    "top_probs": "probability",
    "target_prob": "probability",
    "target_rank": "rank (0 = top-1)",
}


@dataclass
class LensResult(ResultRecord):
    """Per-cell statistics of one logit-lens run (numpy only, no tensors).

    Shapes: T positions, R = L + 1 read-out rows, k top tokens.

    Attributes:
        token_ids: ``[T]`` int64 prompt token ids.
        tokens: ``[T]`` raw token strings (vocabulary spelling).
        display_tokens: ``[T]`` readable strings (visible whitespace, shortened).
        layer_names: ``[R]`` "emb", "1" .. "L-1", "out".
        entropy: ``[R, T]`` float32 entropy of the read-out distribution, nats.
        kl_to_final: ``[R, T]`` float32 KL(p_out || p_row), nats (0 on row "out").
        top_ids: ``[R, T, k]`` int64 top-k token ids, most probable first.
        top_tokens: ``[R, T, k]`` raw strings of top_ids.
        top_probs: ``[R, T, k]`` float32 probabilities of top_ids.
        is_special: ``[T]`` bool, True for special tokens (BOS, <|im_start|> ...).
        template_positions: ``[n]`` int64 positions the chat template adds between the end of
            the user's text and the answer (empty for raw prompts).
        vocab_size: V, the number of logits per cell (entropy is at most ln V).
        model_name: what the model was loaded from.
        prompt: the user's text; ``chat`` and ``system`` say how it was wrapped.
        target: optional target token string; then ``target_id`` and
            ``target_prob`` / ``target_rank`` ``[R, T]`` (rank 0 = top-1).
        byte_level: whether the token strings spell UTF-8 bytes (byte-level BPE; see
            :func:`lenskit.tokens.byte_level_vocabulary`); None when unknown. Displays pass
            it to :func:`lenskit.tokens.format_token`.
    """

    token_ids: np.ndarray
    tokens: np.ndarray
    display_tokens: np.ndarray
    layer_names: np.ndarray
    entropy: np.ndarray
    kl_to_final: np.ndarray
    top_ids: np.ndarray
    top_tokens: np.ndarray
    top_probs: np.ndarray
    is_special: np.ndarray
    template_positions: np.ndarray
    vocab_size: int
    model_name: str = ""
    prompt: str = ""
    chat: bool = True
    system: str | None = None
    target: str | None = None
    target_id: int | None = None
    target_prob: np.ndarray | None = None
    target_rank: np.ndarray | None = None
    byte_level: bool | None = None
    units: dict[str, str] = field(default_factory=lambda: dict(UNITS))

    def __post_init__(self) -> None:
        self.token_ids = self._array("token_ids", np.int64, 1)
        self.tokens = self._str_array("tokens", 1)
        self.display_tokens = self._str_array("display_tokens", 1)
        self.layer_names = self._str_array("layer_names", 1)
        self.entropy = self._array("entropy", np.float32, 2)
        self.kl_to_final = self._array("kl_to_final", np.float32, 2)
        self.top_ids = self._array("top_ids", np.int64, 3)
        self.top_tokens = self._str_array("top_tokens", 3)
        self.top_probs = self._array("top_probs", np.float32, 3)
        self.is_special = self._array("is_special", bool, 1)
        self.template_positions = self._array("template_positions", np.int64, 1)
        self.vocab_size = int(self.vocab_size)
        self.byte_level = None if self.byte_level is None else bool(self.byte_level)
        r, t = self.entropy.shape
        k = self.top_ids.shape[2]
        expected = {
            "tokens": (t,),
            "display_tokens": (t,),
            "layer_names": (r,),
            "kl_to_final": (r, t),
            "top_ids": (r, t, k),
            "top_tokens": (r, t, k),
            "top_probs": (r, t, k),
            "is_special": (t,),
            "token_ids": (t,),
        }
        self._check_shapes(expected, f"R={r}, T={t}, k={k}")
        if self.template_positions.size and (
            self.template_positions.min() < 0 or self.template_positions.max() >= t
        ):
            raise ValueError(
                f"LensResult.template_positions out of range [0, {t}): {self.template_positions}"
            )
        if self.vocab_size < 1:
            raise ValueError(f"LensResult.vocab_size must be >= 1, got {self.vocab_size}")
        if self.target_prob is not None or self.target_rank is not None:
            if self.target_prob is None or self.target_rank is None:
                raise ValueError("LensResult.target_prob and target_rank come together")
            self.target_prob = self._array("target_prob", np.float32, 2)
            self.target_rank = self._array("target_rank", np.int64, 2)
            for name in ("target_prob", "target_rank"):
                if getattr(self, name).shape != (r, t):
                    raise ValueError(f"LensResult.{name} must have shape {(r, t)}")

    @property
    def n_rows(self) -> int:
        """R, the number of read-out rows (L + 1)."""
        return int(self.entropy.shape[0])

    @property
    def n_positions(self) -> int:
        """T, the number of prompt positions."""
        return int(self.entropy.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.top_ids.shape[2])

    def to_frame(self) -> pd.DataFrame:
        """Long table, one row per (layer, position) cell, layers in read-out order."""
        r, t = self.entropy.shape
        layer_idx, pos = np.meshgrid(np.arange(r), np.arange(t), indexing="ij")
        layer_idx, pos = layer_idx.ravel(), pos.ravel()
        data: dict[str, Any] = {
            "layer_index": layer_idx,
            "layer": self.layer_names[layer_idx],
            "position": pos,
            "token_id": self.token_ids[pos],
            "token": self.tokens[pos],
            "display_token": self.display_tokens[pos],
            "is_special": self.is_special[pos],
            "is_template": np.isin(pos, self.template_positions),
            "entropy": self.entropy.ravel(),
            "kl_to_final": self.kl_to_final.ravel(),
        }
        for j in range(self.top_k):
            data[f"top{j + 1}_id"] = self.top_ids[:, :, j].ravel()
            data[f"top{j + 1}_token"] = self.top_tokens[:, :, j].ravel()
            data[f"top{j + 1}_prob"] = self.top_probs[:, :, j].ravel()
        if self.target_prob is not None:
            data["target"] = self.target
            data["target_id"] = self.target_id
            data["target_prob"] = self.target_prob.ravel()
            data["target_rank"] = self.target_rank.ravel()
        return pd.DataFrame(data)


class TargetError(ValueError):
    """The target is not exactly one token of the model's vocabulary."""


#: Bytes of fp32 logits per read-out chunk when ``chunk_size`` is not given (the default
#: model's 31 rows x ~44 positions: one chunk for short prompts, bounded for long ones).
DEFAULT_CHUNK_BYTES = 256 << 20


def layer_names(n_layers: int) -> list[str]:
    """Row labels for L decoder blocks: ``["emb", "1", ..., "L-1", "out"]`` (R = L + 1)."""
    return ["emb", *[str(i) for i in range(1, n_layers)], "out"]


def _spelled_as_vocabulary(target: str) -> bool:
    """Whether ``target`` reads as a vocabulary spelling rather than text: two or more
    characters with SentencePiece's "▁" or one of byte-level BPE's stand-ins for spaces,
    control and non-printable bytes (U+0100..U+0143: "Ġ", "Ċ", "Ł" ...). Plain text such as
    "é" is also a byte-level entry (the byte 0xE9, part of other characters): never that."""
    return len(target) >= 2 and any(c == "\u2581" or "\u0100" <= c <= "\u0143" for c in target)


def target_token_id(tokenizer: Any, target: str | int) -> int:
    """The id of a single-token target such as ``" Canberra"`` (no special tokens added).

    A target that does not encode to one token but is spelled exactly as a vocabulary entry
    with a space / byte marker (``"ĠCanberra"``, ``"▁Paris"``, or ``"ðŁ"`` for a piece of an
    emoji) gives that entry's id.

    Raises:
        TargetError: empty or non-text target, or it tokenizes to more than one token (the
            message shows how it tokenizes).
    """
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return int(target)
    if not isinstance(target, str):
        raise TargetError(
            f"The target must be text (one token, e.g. ' Canberra') or a token id, got "
            f"{type(target).__name__}."
        )
    if target == "":
        raise TargetError("The target is empty: give one token, e.g. ' Canberra' (note the space).")
    try:
        check_text("target", target)
    except PromptError as exc:
        raise TargetError(str(exc)) from None
    ids = tokenizer.encode(target, add_special_tokens=False)
    if len(ids) == 1:
        return int(ids[0])
    if _spelled_as_vocabulary(target):
        exact = tokenizer.convert_tokens_to_ids(target)
        unk = getattr(tokenizer, "unk_token_id", None)
        if isinstance(exact, int) and exact != unk and 0 <= exact < len(tokenizer):
            return exact
    if not ids:
        raise TargetError(f"The target {target!r} gives no tokens.")
    # Each piece as text (" Canberra", not the vocabulary's "ĠCanberra", which would not
    # encode back to itself); a piece that is part of a character shows its vocabulary
    # spelling, which names it when the exact-entry rule above accepts it, else its id does.
    raw = tokenizer.convert_ids_to_tokens(ids)
    texts = [tokenizer.decode([i]) for i in ids]
    pieces = [r if "\ufffd" in t else t for t, r in zip(texts, raw, strict=True)]
    if "\ufffd" in texts[0] and not _spelled_as_vocabulary(pieces[0]):
        first = f"the first piece, {pieces[0]!r}, is part of a character: give its id {ids[0]}"
    else:
        first = f"the first piece is {pieces[0]!r} if you want that"
    hint = ""
    spaced = " " + target.strip()
    if not target.startswith(" ") and len(tokenizer.encode(spaced, add_special_tokens=False)) == 1:
        hint = f" Words after a space usually need the leading space: {spaced!r} is one token."
    raise TargetError(
        f"The target {target!r} is {len(ids)} tokens {pieces}, not one: pick a single token "
        f"({first}).{hint}"
    )


def _vocab_strings(tokenizer: Any, ids: np.ndarray) -> np.ndarray:
    """Raw vocabulary strings for an int array of any shape (ids past the tokenizer -> "<id>")."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    n_tok = len(tokenizer)
    strings = []
    known = [int(i) for i in uniq if 0 <= i < n_tok]
    conv = dict(zip(known, tokenizer.convert_ids_to_tokens(known), strict=True)) if known else {}
    for i in uniq:
        s = conv.get(int(i))
        strings.append(s if s is not None else f"<{int(i)}>")
    out = np.empty(len(strings), dtype=object)
    out[:] = strings
    return out[inverse].reshape(ids.shape)


def _forward(model: Any, input_ids: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """One forward pass: (hidden_states, model logits at the last position ``[V]``)."""
    kwargs = {"output_hidden_states": True, "use_cache": False, "return_dict": True}
    try:
        # logits_to_keep=1: the model's own [T, V] logits are never materialised.
        out = model(input_ids, logits_to_keep=1, **kwargs)
    except TypeError:
        out = model(input_ids, **kwargs)
    return out.hidden_states, out.logits[0, -1]


def _topk(z: torch.Tensor, k: int, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
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
    z: torch.Tensor,
    k: int,
    target_id: int | None,
) -> dict[str, torch.Tensor]:
    """Statistics of one chunk of read-out logits ``z [P, R, V]`` (row R-1 is "out" at each
    of the P positions).

    Passes over the ``P x R x V`` logits: fused entropy + log-normaliser (one pass gives
    both), fused KL to the out row, and one block-max for top-k. The log-normaliser is what
    the top-k and target probabilities need.
    """
    p, r, v = z.shape
    flat = z.view(p * r, v)
    ent, lse = entropy_lse(flat)
    ent = ent.view(p, r)
    lse = lse.view(p, r)  # [P, R] log-normaliser of every row
    top_vals, top_ids = _topk(flat, k)
    z_out = z[:, r - 1, :]  # [P, V], rows are contiguous
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
    if target_id is not None:
        zt = flat[:, target_id]
        stats["target_prob"] = torch.exp(zt.float().view(p, r) - lse)
        stats["target_rank"] = (flat > zt[:, None]).sum(dim=-1).view(p, r)
    return stats


def run_lens(
    model: Any,
    tokenizer: Any,
    prompt: str | Sequence[dict[str, str]],
    *,
    chat: bool = True,
    system: str | None = None,
    top_k: int = 5,
    target: str | int | None = None,
    chunk_size: int | None = None,
    progress: Callable[[float, str], None] | bool | None = None,
) -> LensResult:
    """Run the logit lens on one prompt: every layer read out at every position.

    One forward pass (``output_hidden_states=True``); the read-out then streams over chunks of
    (row, position) cells, so at most ``chunk_size x V`` logits exist at a time. Row "out" is
    the model's own logits (HF's last hidden state through the unembedding and the model's
    logit scaling / soft-capping only).

    Args:
        model: a causal LM from :func:`lenskit.load_model` (any device/dtype).
        tokenizer: its tokenizer.
        prompt: the user's text (or chat messages, see :func:`lenskit.encode_prompt`).
        chat: wrap the prompt in the chat template (``add_generation_prompt=True``).
        system: optional system prompt (chat only).
        top_k: number of top tokens kept per cell (1 <= k <= V).
        target: optional single-token target string (e.g. ``" Canberra"``) or token id.
        chunk_size: cells (row x position logit vectors) per chunk, rounded to whole
            positions (all R rows of a position together); default ~256 MiB of fp32 logits.
        progress: ``progress(fraction, message)``, True for a tqdm bar on stderr, or None.

    Returns:
        :class:`LensResult` with R = L + 1 rows and T positions; entropy and KL in nats.

    Raises:
        lenskit.prompts.PromptError: empty prompt, longer than the model's context, or
            ``chat=True`` with a tokenizer that has no chat template.
        TargetError: the target is not exactly one token.
        ValueError: bad ``top_k`` or ``chunk_size``.
        lenskit.models.ReadoutError: the architecture's read-out cannot be found, or does not
            reproduce the model's own logits.
    """
    readout = find_readout(model)
    layers = decoder_layers(model)
    n_layers = len(layers)
    n_rows = n_layers + 1
    vocab = readout.vocab_size
    if (
        not isinstance(top_k, (int, np.integer))
        or isinstance(top_k, bool)
        or not 1 <= top_k <= vocab
    ):
        raise ValueError(f"top_k must be an integer in [1, {vocab}], got {top_k!r}")
    if chunk_size is not None and (not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    encoded = encode_prompt(
        tokenizer, prompt, chat=chat, system=system, max_length=context_length(model)
    )
    target_id = None if target is None else target_token_id(tokenizer, target)
    if target_id is not None and not 0 <= target_id < vocab:
        raise TargetError(f"target id {target_id} is outside the vocabulary [0, {vocab})")

    report, close = progress_reporter(progress, "Logit lens")
    try:
        report(0.0, f"Forward pass over {len(encoded)} tokens")
        weight = readout.unembed.weight
        device = weight.device
        ids = torch.tensor([encoded.input_ids], dtype=torch.long, device=model.device)
        with torch.inference_mode():
            hidden, model_last = _forward(model, ids)
            if len(hidden) != n_rows:
                raise ReadoutError(
                    f"{readout.architecture} returned {len(hidden)} hidden states for "
                    f"{n_layers} decoder blocks (expected {n_rows})"
                )
            stats = _read_out(readout, hidden, top_k, target_id, chunk_size, device, report)
            _check_out_row(readout, stats.pop("last_out_logits"), model_last)
    finally:
        if close is not None:
            close()

    top_ids = stats["top_ids"]
    tokens = np.asarray(encoded.tokens, dtype=object)
    byte_level = byte_level_vocabulary(tokenizer)
    result = LensResult(
        token_ids=np.asarray(encoded.input_ids, dtype=np.int64),
        tokens=tokens,
        display_tokens=[format_token(t, byte_level=byte_level) for t in encoded.tokens],
        layer_names=layer_names(n_layers),
        entropy=stats["entropy"],
        kl_to_final=stats["kl_to_final"],
        top_ids=top_ids,
        top_tokens=_vocab_strings(tokenizer, top_ids),
        top_probs=stats["top_probs"],
        is_special=encoded.is_special,
        template_positions=encoded.template_positions,
        vocab_size=vocab,
        model_name=model_name(model),
        prompt=encoded.prompt,
        chat=chat,
        system=system,
        target=None if target is None else (target if isinstance(target, str) else str(target)),
        target_id=target_id,
        target_prob=stats.get("target_prob"),
        target_rank=stats.get("target_rank"),
        byte_level=byte_level,
    )
    return result


def _read_out(
    readout: Readout,
    hidden: Sequence[torch.Tensor],
    top_k: int,
    target_id: int | None,
    chunk_size: int | None,
    device: torch.device,
    report: Callable[[float, str], None],
) -> dict[str, np.ndarray]:
    """Stream the read-out over position chunks; returns numpy ``[R, T, ...]`` statistics."""
    n_rows = len(hidden)
    n_pos = hidden[0].shape[1]
    vocab = readout.vocab_size
    if chunk_size is None:
        chunk_size = max(1, DEFAULT_CHUNK_BYTES // (4 * vocab))
    step = max(1, chunk_size // n_rows)  # whole positions: each needs its own "out" row
    # Equal chunks: a small remainder chunk would re-read the whole unembedding for little work.
    n_chunks = -(-n_pos // step)
    step = -(-n_pos // n_chunks)
    weight = readout.unembed.weight
    bias = getattr(readout.unembed, "bias", None)
    plain_linear = isinstance(readout.unembed, torch.nn.Linear)
    out: dict[str, list[torch.Tensor]] = {}
    last_out = None
    buffer: torch.Tensor | None = None
    for start in range(0, n_pos, step):
        stop = min(n_pos, start + step)
        # [P, R-1, d] block outputs (and embeddings) -> final norm (-> OPT project_out);
        # the last hidden state is already normalised by the model: only unembed it.
        inner = torch.stack([h[0, start:stop].to(device) for h in hidden[:-1]], dim=1)
        final = hidden[-1][0, start:stop].to(device)
        x = torch.cat([readout.normalize(inner), final[:, None, :]], dim=1)
        if plain_linear:
            # One buffer for all chunks: a fresh [chunk, V] allocation per chunk costs page
            # faults on every chunk (~15% of the GEMM on the default model).
            n = x.shape[0] * x.shape[1]
            if buffer is None:
                buffer = torch.empty(step * n_rows, vocab, dtype=weight.dtype, device=device)
            z = torch.mm(x.reshape(n, -1), weight.T, out=buffer[:n]).view(*x.shape[:2], vocab)
            if bias is not None:
                z += bias
            z = readout.transform(z, inplace=True)
        else:
            z = readout.transform(readout.unembed(x))
        stats = _chunk_stats(z, top_k, target_id)
        last_out = z[-1, -1].float().clone()
        for name, value in stats.items():
            out.setdefault(name, []).append(value.cpu())
        report(stop / n_pos, f"Read-out {stop}/{n_pos} positions")
    result = {
        # [P, R, ...] chunks -> [R, T, ...]
        name: torch.cat(chunks, dim=0).transpose(0, 1).contiguous().numpy()
        for name, chunks in out.items()
    }
    result["kl_to_final"][-1] = 0.0  # KL of the out row to itself, exactly
    result["last_out_logits"] = last_out
    return result


def _check_out_row(readout: Readout, ours: torch.Tensor, model_last: torch.Tensor) -> None:
    """Row "out" must equal the model's own logits; a mismatch means an unknown logit
    transform (scaling/capping) that the read-out does not reproduce."""
    theirs = model_last.float().to(ours.device)
    if theirs.shape != ours.shape:
        raise ReadoutError(
            f"{readout.architecture}: the unembedding gives {ours.shape[-1]} logits but the "
            f"model returns {theirs.shape[-1]}"
        )
    tol = (1e-4 if model_last.dtype == torch.float32 else 3e-2) * (1.0 + theirs.abs().max().item())
    err = (ours - theirs).abs().max().item()
    if not err <= tol:
        raise ReadoutError(
            f"{readout.architecture}: reading the last hidden state out through the "
            f"unembedding (softcap={readout.softcap}, scale={readout.scale}) differs from the "
            f"model's own logits by {err:.3g} (> {tol:.3g}); this architecture applies a "
            "logit transform lenskit does not know."
        )
