"""Logit lens: read every layer's hidden state out through the final norm and unembedding.

Rows (R = L + 1, L = number of decoder blocks): row 0 "emb" = hidden_states[0] read out;
row i in 1..L-1 = output of block i read out; row L "out" = the model's own logits, exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["LensResult", "run_lens"]

#: Units of the float fields, for labels and exports.
UNITS = {
    "entropy": "nats",
    "kl_to_final": "nats",
    "top_probs": "probability",
    "target_prob": "probability",
    "target_rank": "rank (0 = top-1)",
}


def _as_array(value: Any, dtype: Any, name: str, ndim: int) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim != ndim:
        raise ValueError(f"LensResult.{name} must have {ndim} dimensions, got shape {arr.shape}")
    return arr


def _str_array(value: Any, name: str, ndim: int) -> np.ndarray:
    arr = np.empty(np.shape(value), dtype=object)
    arr[...] = value if ndim == 1 or isinstance(value, np.ndarray) else np.asarray(value, dtype=object)
    if arr.ndim != ndim:
        raise ValueError(f"LensResult.{name} must have {ndim} dimensions, got shape {arr.shape}")
    return arr


@dataclass
class LensResult:
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
    units: dict[str, str] = field(default_factory=lambda: dict(UNITS))

    def __post_init__(self) -> None:
        self.token_ids = _as_array(self.token_ids, np.int64, "token_ids", 1)
        self.tokens = _str_array(self.tokens, "tokens", 1)
        self.display_tokens = _str_array(self.display_tokens, "display_tokens", 1)
        self.layer_names = _str_array(self.layer_names, "layer_names", 1)
        self.entropy = _as_array(self.entropy, np.float32, "entropy", 2)
        self.kl_to_final = _as_array(self.kl_to_final, np.float32, "kl_to_final", 2)
        self.top_ids = _as_array(self.top_ids, np.int64, "top_ids", 3)
        self.top_tokens = _str_array(self.top_tokens, "top_tokens", 3)
        self.top_probs = _as_array(self.top_probs, np.float32, "top_probs", 3)
        self.is_special = _as_array(self.is_special, bool, "is_special", 1)
        self.template_positions = _as_array(self.template_positions, np.int64, "template_positions", 1)
        self.vocab_size = int(self.vocab_size)
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
        for name, shape in expected.items():
            got = getattr(self, name).shape
            if got != shape:
                raise ValueError(f"LensResult.{name} has shape {got}, expected {shape} (R={r}, T={t}, k={k})")
        if self.template_positions.size and (
            self.template_positions.min() < 0 or self.template_positions.max() >= t
        ):
            raise ValueError(f"LensResult.template_positions out of range [0, {t}): {self.template_positions}")
        if self.vocab_size < 1:
            raise ValueError(f"LensResult.vocab_size must be >= 1, got {self.vocab_size}")
        if self.target_prob is not None or self.target_rank is not None:
            if self.target_prob is None or self.target_rank is None:
                raise ValueError("LensResult.target_prob and target_rank come together")
            self.target_prob = _as_array(self.target_prob, np.float32, "target_prob", 2)
            self.target_rank = _as_array(self.target_rank, np.int64, "target_rank", 2)
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
            data["target_prob"] = self.target_prob.ravel()
            data["target_rank"] = self.target_rank.ravel()
        return pd.DataFrame(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (lists, not arrays) for JSON."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.tolist() if isinstance(value, np.ndarray) else value
        return out

    def to_json(self, **kwargs: Any) -> str:
        """JSON text; NaN/inf are written as JSON's NaN/Infinity extensions."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LensResult:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"LensResult.from_dict: unknown fields {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> LensResult:
        return cls.from_dict(json.loads(text))


def run_lens(*args: Any, **kwargs: Any) -> LensResult:  # replaced by the engine implementation
    raise NotImplementedError
