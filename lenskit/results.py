"""Result dataclasses: numpy only, validated on construction, with a dict/JSON round trip.

* :class:`LensResult` - one logit-lens run (rows x positions).
* :class:`SweepResult` - one intervention sweep (swept blocks x generated tokens).
* :class:`PairwiseKL` - KL between every pair of rows at one position.
* :class:`GenerationLens` - the lens over a prompt and its greedy continuation.
* :class:`SweepReport` - a sweep with, optionally, the lens over its generation.

A field that does not fit (wrong shape, out of range) is an
:class:`~lenskit.errors.InputError` naming the class and the field: results also come from
files (``from_json``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from lenskit.errors import InputError
from lenskit.text.tokens import format_token

__all__ = [
    "GenerationLens",
    "LensResult",
    "PairwiseKL",
    "ResultRecord",
    "SweepReport",
    "SweepResult",
]

_R = TypeVar("_R", bound="ResultRecord")


class ResultRecord:
    """Mixin for a numpy-only result dataclass.

    Gives ``__post_init__`` validated array coercion (errors name the class and the field) and
    ``to_dict`` / ``to_json`` / ``from_dict`` / ``from_json``.
    """

    def _array(self, name: str, dtype: Any, ndim: int) -> np.ndarray:
        """Field ``name`` as an ``ndim``-dimensional array of ``dtype``."""
        return self._check_ndim(name, np.asarray(getattr(self, name), dtype=dtype), ndim)

    def _str_array(self, name: str, ndim: int) -> np.ndarray:
        """Field ``name`` as an ``ndim``-dimensional object array of its elements (strings)."""
        value = getattr(self, name)
        arr = np.empty(np.shape(value), dtype=object)
        arr[...] = value if isinstance(value, np.ndarray) else np.asarray(value, dtype=object)
        return self._check_ndim(name, arr, ndim)

    def _check_ndim(self, name: str, arr: np.ndarray, ndim: int) -> np.ndarray:
        if arr.ndim != ndim:
            raise InputError(
                f"{type(self).__name__}.{name} must have {ndim} dimensions, got shape {arr.shape}"
            )
        return arr

    def _check_shapes(self, expected: dict[str, tuple[int, ...]], sizes: str) -> None:
        """Raise InputError naming the first field whose shape is not ``expected[field]``;
        ``sizes`` (e.g. ``"R=31, T=12"``) goes into the message."""
        for name, shape in expected.items():
            got = getattr(self, name).shape
            if got != shape:
                raise InputError(
                    f"{type(self).__name__}.{name} has shape {got}, expected {shape} ({sizes})"
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (lists, not arrays) for JSON."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = value.tolist() if isinstance(value, np.ndarray) else value
        return out

    def to_json(self, **kwargs: Any) -> str:
        """JSON text; NaN/inf are written as JSON's NaN/Infinity extensions."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls: type[_R], data: dict[str, Any]) -> _R:
        """The inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise InputError(f"{cls.__name__}.from_dict: unknown fields {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls: type[_R], text: str) -> _R:
        """The inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


#: Units of the float fields of :class:`LensResult`, for labels and exports.
LENS_UNITS = {
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
            :func:`lenskit.text.tokens.byte_level_vocabulary`); None when unknown. Displays pass
            it to :func:`lenskit.text.tokens.format_token`.
        lens: the name of the lens the inner rows were read through ("logit").
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
    lens: str = "logit"
    units: dict[str, str] = field(default_factory=lambda: dict(LENS_UNITS))

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
            raise InputError(
                f"LensResult.template_positions out of range [0, {t}): {self.template_positions}"
            )
        if self.vocab_size < 1:
            raise InputError(f"LensResult.vocab_size must be >= 1, got {self.vocab_size}")
        if self.target_prob is not None or self.target_rank is not None:
            if self.target_prob is None or self.target_rank is None:
                raise InputError("LensResult.target_prob and target_rank come together")
            self.target_prob = self._array("target_prob", np.float32, 2)
            self.target_rank = self._array("target_rank", np.int64, 2)
            for name in ("target_prob", "target_rank"):
                if getattr(self, name).shape != (r, t):
                    raise InputError(f"LensResult.{name} must have shape {(r, t)}")

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
            "lens": self.lens,
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


#: Units of the float fields of :class:`SweepResult`.
SWEEP_UNITS = {
    "kl": "nats",
    "generated_prob_clean": "probability",
    "generated_prob_intervened": "probability",
}


@dataclass
class SweepResult(ResultRecord):
    """KL heatmap of an intervention sweep: swept blocks x generated tokens (numpy only).

    Shapes: nL swept blocks, G generated tokens, P intervened positions, T prompt tokens.

    Attributes:
        layers: ``[nL]`` int64 swept block indices (0-based, ascending, unique).
        generated_ids: ``[G]`` int64 greedy tokens of the clean run, Gen0 first.
        generated_tokens: ``[G]`` raw token strings (vocabulary spelling).
        generated_display_tokens: ``[G]`` readable strings (:func:`lenskit.text.tokens.format_token`).
        kl: ``[nL, G]`` float32 KL(p_clean || p_intervened) at generated position j, nats.
        top_ids_intervened: ``[nL, G]`` int64 top-1 token under the intervention.
        top_tokens_intervened: ``[nL, G]`` raw strings of ``top_ids_intervened``.
        generated_prob_clean: ``[G]`` float32 probability of Gen j in the clean run.
        generated_prob_intervened: ``[nL, G]`` float32 probability of (the clean) Gen j under
            the intervention.
        positions: ``[P]`` int64 intervened prompt positions (ascending, unique; may be empty).
        prompt_token_ids: ``[T]`` int64 the encoded prompt (template included when chat).
        prompt_tokens: ``[T]`` raw strings of ``prompt_token_ids``.
        intervention: "skip", "mean" or "noise".
        seed: seed of the "noise" intervention (stored for every intervention).
        num_blocks: L, the model's number of decoder blocks.
        max_new_tokens: requested generation length (G is smaller only if EOS came first).
        model_name: what the model was loaded from.
        prompt: the user's text; ``chat`` and ``system`` say how it was wrapped.
        byte_level: whether the token strings spell UTF-8 bytes (as
            :attr:`lenskit.LensResult.byte_level`); None when unknown.
        units: units of the float fields.
    """

    layers: np.ndarray
    generated_ids: np.ndarray
    generated_tokens: np.ndarray
    generated_display_tokens: np.ndarray
    kl: np.ndarray
    top_ids_intervened: np.ndarray
    top_tokens_intervened: np.ndarray
    generated_prob_clean: np.ndarray
    generated_prob_intervened: np.ndarray
    positions: np.ndarray
    prompt_token_ids: np.ndarray
    prompt_tokens: np.ndarray
    intervention: str
    seed: int = 0
    num_blocks: int = 0
    max_new_tokens: int = 0
    model_name: str = ""
    prompt: str = ""
    chat: bool = True
    system: str | None = None
    byte_level: bool | None = None
    units: dict[str, str] = field(default_factory=lambda: dict(SWEEP_UNITS))

    def __post_init__(self) -> None:
        self.byte_level = None if self.byte_level is None else bool(self.byte_level)
        self.layers = self._array("layers", np.int64, 1)
        self.generated_ids = self._array("generated_ids", np.int64, 1)
        self.generated_tokens = self._str_array("generated_tokens", 1)
        self.generated_display_tokens = self._str_array("generated_display_tokens", 1)
        self.kl = self._array("kl", np.float32, 2)
        self.top_ids_intervened = self._array("top_ids_intervened", np.int64, 2)
        self.top_tokens_intervened = self._str_array("top_tokens_intervened", 2)
        self.generated_prob_clean = self._array("generated_prob_clean", np.float32, 1)
        self.generated_prob_intervened = self._array("generated_prob_intervened", np.float32, 2)
        self.positions = self._array("positions", np.int64, 1)
        self.prompt_token_ids = self._array("prompt_token_ids", np.int64, 1)
        self.prompt_tokens = self._str_array("prompt_tokens", 1)
        self.seed = int(self.seed)
        self.num_blocks = int(self.num_blocks)
        self.max_new_tokens = int(self.max_new_tokens)
        self.chat = bool(self.chat)

        n_l, g = self.kl.shape
        t = self.prompt_token_ids.shape[0]
        expected = {
            "layers": (n_l,),
            "generated_ids": (g,),
            "generated_tokens": (g,),
            "generated_display_tokens": (g,),
            "top_ids_intervened": (n_l, g),
            "top_tokens_intervened": (n_l, g),
            "generated_prob_clean": (g,),
            "generated_prob_intervened": (n_l, g),
            "prompt_tokens": (t,),
        }
        self._check_shapes(expected, f"nL={n_l}, G={g}, T={t}")
        from lenskit.interventions.registry import INTERVENTIONS

        if self.intervention not in INTERVENTIONS:
            raise InputError(
                f"SweepResult.intervention must be one of {tuple(INTERVENTIONS)}, got "
                f"{self.intervention!r}"
            )
        if n_l and (np.any(np.diff(self.layers) <= 0) or self.layers[0] < 0):
            raise InputError(
                f"SweepResult.layers must be ascending, unique and >= 0: {self.layers}"
            )
        if self.num_blocks and n_l and self.layers[-1] >= self.num_blocks:
            raise InputError(
                f"SweepResult.layers out of range [0, {self.num_blocks}): {self.layers}"
            )
        if self.positions.size and (
            np.any(np.diff(self.positions) <= 0) or self.positions[0] < 0 or self.positions[-1] >= t
        ):
            raise InputError(
                f"SweepResult.positions must be ascending, unique and in [0, {t}): {self.positions}"
            )
        if self.max_new_tokens and g > self.max_new_tokens:
            raise InputError(
                f"SweepResult has {g} generated tokens but max_new_tokens={self.max_new_tokens}"
            )

    @property
    def n_generated(self) -> int:
        """G, the number of generated tokens (columns of ``kl``)."""
        return int(self.kl.shape[1])

    @property
    def n_prompt(self) -> int:
        """T, the number of prompt tokens (template included)."""
        return int(self.prompt_token_ids.shape[0])

    @property
    def gen_labels(self) -> list[str]:
        """Column labels ``"Gen0"``, ``"Gen1"``, ..."""
        return [f"Gen{j}" for j in range(self.n_generated)]

    def to_frame(self) -> pd.DataFrame:
        """Long table, one row per (swept block, generated token) cell, blocks ascending.

        ``predicting_position`` is the sequence position whose next-token distribution the
        cell compares (Gen j is predicted at ``n_prompt - 1 + j``); ``intervened_positions``
        (comma-separated) and ``seed`` repeat the run's settings on every row.
        """
        n_l, g = self.kl.shape
        li, gj = np.meshgrid(np.arange(n_l), np.arange(g), indexing="ij")
        li, gj = li.ravel(), gj.ravel()
        top_tokens = self.top_tokens_intervened.ravel()
        top_ids = self.top_ids_intervened.ravel()
        data: dict[str, Any] = {
            "layer": self.layers[li],
            "gen_index": gj,
            "gen_label": np.asarray([f"Gen{j}" for j in gj], dtype=object),
            # The position whose next-token distribution this is (not an intervened one).
            "predicting_position": self.n_prompt - 1 + gj,
            "generated_id": self.generated_ids[gj],
            "generated_token": self.generated_tokens[gj],
            "generated_display_token": self.generated_display_tokens[gj],
            "kl": self.kl.ravel(),
            "top_id_intervened": top_ids,
            "top_token_intervened": top_tokens,
            "top_display_token_intervened": np.asarray(
                [format_token(str(t), byte_level=self.byte_level) for t in top_tokens],
                dtype=object,
            ),
            "top_changed": top_ids != self.generated_ids[gj],
            "generated_prob_clean": self.generated_prob_clean[gj],
            "generated_prob_intervened": self.generated_prob_intervened.ravel(),
            "intervention": self.intervention,
            # What a CSV reader needs to reproduce the run (the JSON holds them as lists).
            "intervened_positions": ",".join(str(int(t)) for t in self.positions),
            "seed": self.seed,
        }
        return pd.DataFrame(data)


@dataclass
class PairwiseKL(ResultRecord):
    """KL between the read-out distributions of every pair of rows at one position.

    Attributes:
        layer_names: ``[R]`` row names as in :attr:`LensResult.layer_names`.
        kl: ``[R, R]`` float32, ``kl[i, j]`` = KL(p_row_i || p_row_j) in nats; diagonal 0.
        position: the position (0-based) in the encoded prompt.
        token: the raw token string at that position.
        lens: the lens's name.

    Unpacks as ``names, kl = layer_pairwise_kl(...)``.
    """

    layer_names: np.ndarray
    kl: np.ndarray
    position: int = 0
    token: str = ""
    lens: str = "logit"

    def __post_init__(self) -> None:
        self.layer_names = self._str_array("layer_names", 1)
        self.kl = self._array("kl", np.float32, 2)
        r = self.layer_names.shape[0]
        self._check_shapes({"kl": (r, r)}, f"R={r}")
        self.position = int(self.position)

    def __iter__(self) -> Iterator[Any]:
        yield list(self.layer_names)
        yield self.kl


@dataclass
class GenerationLens:
    """The lens over a prompt followed by its greedy continuation.

    Attributes:
        result: a :class:`LensResult` over the T + G positions prompt + Gen0..Gen{G-1}.
        n_prompt: T; Gen j sits at position ``T + j`` and is predicted at ``T - 1 + j``.

    Unpacks as ``result, n_prompt = lens_on_generation(...)``.
    """

    result: LensResult
    n_prompt: int

    def __iter__(self) -> Iterator[Any]:
        yield self.result
        yield self.n_prompt

    @property
    def generated_ids(self) -> np.ndarray:
        """``[G]`` the continuation's token ids."""
        return self.result.token_ids[self.n_prompt :]


@dataclass
class SweepReport:
    """What the app and the CLI show for one sweep request.

    Attributes:
        sweep: the sweep.
        generation: the lens over prompt + the sweep's generation, when asked for and when it
            fits the model's context (else None and ``warning`` says why).
        warning: a message for the user, or None.
    """

    sweep: SweepResult
    generation: GenerationLens | None = None
    warning: str | None = None
