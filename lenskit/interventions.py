"""Which layers does the answer depend on? Greedy generation, intervention sweeps, layer KL.

Definitions (the same as DESIGN.md and the README):

* L = number of decoder blocks; an intervention layer index ``l`` in ``0..L-1`` means decoder
  block ``l`` (``decoder_layers(model)[l]``, 0-based). Intervening at block ``l`` changes the
  logit-lens rows ``l + 1`` .. ``out`` (row ``i`` of a :class:`~lenskit.lens.LensResult` is
  the output of the ``i``-th block, 1-based).
* Clean run: the prompt, then ``G <= max_new_tokens`` greedily generated tokens Gen0..Gen{G-1}.
  "Generated position j" is the position whose next-token distribution produced Gen j, so
  Gen0 is predicted at the last prompt position and Gen j at position ``n_prompt - 1 + j``.
* Sweep cell ``(l, j)``: KL(p_clean || p_intervened) in nats of the next-token distribution at
  generated position j, where the intervened run is the clean sequence (prompt + Gen0..Gen{G-2},
  teacher-forced, no KV cache) with the intervention applied at block ``l`` at the chosen
  PROMPT positions only. Generated tokens are never intervened on.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from lenskit._results import ResultRecord
from lenskit.lens import LensResult
from lenskit.ops import kl_div, pairwise_kl
from lenskit.tokens import byte_level_vocabulary, format_token

__all__ = [
    "INTERVENTIONS",
    "MAX_NEW_TOKENS",
    "NOISE_SCALE",
    "InterventionError",
    "LayerSelectionError",
    "PositionSelectionError",
    "UnknownInterventionError",
    "GenerationLengthError",
    "SweepResult",
    "greedy_generate",
    "intervention_sweep",
    "lens_on_generation",
    "layer_pairwise_kl",
]

_log = logging.getLogger(__name__)

#: The interventions :func:`intervention_sweep` knows.
INTERVENTIONS = ("skip", "mean", "noise")
#: Named position selections (besides an explicit list of prompt indices).
POSITION_MODES = ("template", "all-prompt")
#: How the sweep is computed; all give the same numbers up to float rounding.
STRATEGIES = ("auto", "prefix", "batched", "sequential")
#: Upper bound for ``max_new_tokens``.
MAX_NEW_TOKENS = 64
#: "noise": expected noise norm / residual norm at each intervened position.
NOISE_SCALE = 1.0

#: Units of the float fields of :class:`SweepResult`.
UNITS = {
    "kl": "nats",
    "generated_prob_clean": "probability",
    "generated_prob_intervened": "probability",
}

ProgressFn = Callable[[float, str], None]


class InterventionError(ValueError):
    """Bad input to an intervention function (base class of the specific errors)."""


class LayerSelectionError(InterventionError):
    """Empty layer selection, or a block index outside ``0..L-1``."""


class PositionSelectionError(InterventionError):
    """Unknown position mode, a position outside the prompt, or no positions to average."""


class UnknownInterventionError(InterventionError):
    """``intervention`` is not one of :data:`INTERVENTIONS`."""


class GenerationLengthError(InterventionError):
    """``max_new_tokens`` outside ``1..MAX_NEW_TOKENS``."""


# --------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------


@dataclass
class SweepResult(ResultRecord):
    """KL heatmap of an intervention sweep: swept blocks x generated tokens (numpy only).

    Shapes: nL swept blocks, G generated tokens, P intervened positions, T prompt tokens.

    Attributes:
        layers: ``[nL]`` int64 swept block indices (0-based, ascending, unique).
        generated_ids: ``[G]`` int64 greedy tokens of the clean run, Gen0 first.
        generated_tokens: ``[G]`` raw token strings (vocabulary spelling).
        generated_display_tokens: ``[G]`` readable strings (:func:`lenskit.tokens.format_token`).
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
    units: dict[str, str] = field(default_factory=lambda: dict(UNITS))

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
        if self.intervention not in INTERVENTIONS:
            raise ValueError(
                f"SweepResult.intervention must be one of {INTERVENTIONS}, got {self.intervention!r}"
            )
        if n_l and (np.any(np.diff(self.layers) <= 0) or self.layers[0] < 0):
            raise ValueError(
                f"SweepResult.layers must be ascending, unique and >= 0: {self.layers}"
            )
        if self.num_blocks and n_l and self.layers[-1] >= self.num_blocks:
            raise ValueError(
                f"SweepResult.layers out of range [0, {self.num_blocks}): {self.layers}"
            )
        if self.positions.size and (
            np.any(np.diff(self.positions) <= 0) or self.positions[0] < 0 or self.positions[-1] >= t
        ):
            raise ValueError(
                f"SweepResult.positions must be ascending, unique and in [0, {t}): {self.positions}"
            )
        if self.max_new_tokens and g > self.max_new_tokens:
            raise ValueError(
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


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def _device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


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


def _cache_kwarg(model: nn.Module) -> str:
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _forward(model: nn.Module, ids: torch.Tensor, n_last: int, **extra: Any) -> Any:
    """``model(ids, **extra)`` computing logits for the last ``n_last`` positions only (where
    the model supports ``logits_to_keep``; slice ``.logits[:, -n_last:]`` either way)."""
    try:
        return model(input_ids=ids, logits_to_keep=n_last, **extra)
    except TypeError:  # a model without logits_to_keep
        return model(input_ids=ids, **extra)


def _model_logits(model: nn.Module, input_ids: torch.Tensor, n_last: int) -> torch.Tensor:
    """The model's own logits at the last ``n_last`` positions: ``[B, n_last, V]``."""
    return _forward(model, input_ids, n_last, use_cache=False).logits[:, -n_last:]


def _eos_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    """EOS ids that stop generation: the generation config's (as model.generate), else the
    tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple, set)) else [eos])}


def _tokens(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    if tokenizer is None:
        return [str(i) for i in ids]
    return [str(t) for t in tokenizer.convert_ids_to_tokens([int(i) for i in ids])]


def _check_max_new_tokens(max_new_tokens: int) -> int:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
        raise GenerationLengthError(
            f"max_new_tokens must be an int in 1..{MAX_NEW_TOKENS}, got {max_new_tokens!r}"
        )
    if not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS:
        raise GenerationLengthError(
            f"max_new_tokens must be in 1..{MAX_NEW_TOKENS}, got {max_new_tokens}"
        )
    return int(max_new_tokens)


def _few(values: Sequence[int], shown: int = 6) -> str:
    """``values`` for an error message, elided past ``shown`` (a typo can list millions)."""
    if len(values) <= shown:
        return str(list(values))
    head = ", ".join(str(v) for v in values[: shown // 2])
    tail = ", ".join(str(v) for v in values[-(shown // 2) :])
    return f"[{head}, ..., {tail}] ({len(values)} indices)"


def _int_list(values: Iterable[Any], what: str, error: type[InterventionError]) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise error(f"{what} must be integers, got {v!r} ({type(v).__name__})")
        out.append(int(v))
    return out


def _resolve_layers(layers: Iterable[int] | None, n_blocks: int) -> list[int]:
    if layers is None:
        return list(range(n_blocks))
    if isinstance(layers, (str, bytes)):
        raise LayerSelectionError(f"layers must be block indices, got {layers!r}")
    if isinstance(layers, (int, np.integer)):
        layers = [layers]
    chosen = _int_list(layers, "layers", LayerSelectionError)
    if not chosen:
        raise LayerSelectionError("layers is empty: select at least one block (None = all)")
    bad = [i for i in chosen if not 0 <= i < n_blocks]
    if bad:
        raise LayerSelectionError(
            f"layer indices {_few(bad)} out of range: the model has {n_blocks} blocks "
            f"(0..{n_blocks - 1})"
        )
    return sorted(set(chosen))


def _resolve_positions(
    positions: str | Iterable[int], n_prompt: int, template_positions: Sequence[int]
) -> list[int]:
    if isinstance(positions, str):
        if positions == "template":
            if len(template_positions) == 0:
                # The default mode on a raw prompt would sweep nothing and report KL = 0.
                raise PositionSelectionError(
                    "positions='template' selects nothing: this prompt has no chat-template "
                    "tokens (raw text). Use 'all-prompt' or explicit prompt indices."
                )
            return sorted({int(p) for p in template_positions})
        if positions == "all-prompt":
            return list(range(n_prompt))
        raise PositionSelectionError(
            f"positions must be one of {POSITION_MODES} or a list of prompt indices, "
            f"got {positions!r}"
        )
    if isinstance(positions, (int, np.integer)):
        positions = [positions]
    chosen = _int_list(positions, "positions", PositionSelectionError)
    bad = [p for p in chosen if not 0 <= p < n_prompt]
    if bad:
        raise PositionSelectionError(
            f"positions {_few(bad)} out of range: the prompt has {n_prompt} tokens "
            f"(0..{n_prompt - 1})"
        )
    return sorted(set(chosen))


def _mean_sources(positions: Sequence[int], n_prompt: int) -> list[int]:
    chosen = set(positions)
    others = [p for p in range(1, n_prompt) if p not in chosen]
    if positions and not others:
        raise PositionSelectionError(
            "intervention 'mean' averages block l's output over the prompt positions that are "
            "not intervened on (position 0 excluded), but there are none: "
            f"prompt length {n_prompt}, positions {_few(sorted(chosen))}"
        )
    return others


def _noise(seed: int, layer: int, n_prompt: int, width: int) -> torch.Tensor:
    """Standard normal ``[n_prompt, width]`` float32 for (seed, layer); row p is position p's."""
    state = np.random.SeedSequence([int(seed), int(layer)]).generate_state(2, np.uint32)
    gen = torch.Generator(device="cpu").manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return torch.randn(n_prompt, width, generator=gen, dtype=torch.float32)


# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------


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
        max_new_tokens: 1..:data:`MAX_NEW_TOKENS`.
        eos_token_ids: ids that stop generation (default: the model's generation config's
            ``eos_token_id``).

    Returns:
        The G generated token ids, ``1 <= G <= max_new_tokens``.
    """
    n_new = _check_max_new_tokens(max_new_tokens)
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=_device(model)).reshape(1, -1)
    if ids.shape[1] == 0:
        raise InterventionError("cannot generate from an empty prompt")
    eos = set(eos_token_ids) if eos_token_ids is not None else _eos_ids(model, None)
    cache_name = _cache_kwarg(model)
    out = _forward(model, ids, 1, use_cache=True)
    generated: list[int] = []
    while True:
        next_id = int(out.logits[0, -1].argmax())
        generated.append(next_id)
        if len(generated) >= n_new or next_id in eos:
            return generated
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        step = torch.tensor([[next_id]], dtype=torch.long, device=ids.device)
        if cache is None:  # a model without a cache: recompute the whole sequence
            ids = torch.cat([ids, step], dim=1)
            out = _forward(model, ids, 1, use_cache=False)
        else:
            ids = torch.cat([ids, step], dim=1)
            out = _forward(model, step, 1, use_cache=True, **{cache_name: cache})


# --------------------------------------------------------------------------------------
# The sweep engine (token level)
# --------------------------------------------------------------------------------------


class _InterventionHook:
    """Forward hook on one block: edits rows ``rows`` of its output at prompt ``positions``.

    Registered with ``with_kwargs=True``; handles blocks returning a tensor or a tuple. The
    block may see only the positions from ``offset`` on (the earlier ones then come from a
    KV cache): ``positions`` are absolute, local index = position - offset.
    """

    def __init__(
        self,
        kind: str,
        positions: torch.Tensor,
        rows: torch.Tensor | None,
        *,
        offset: int = 0,
        mean_sources: torch.Tensor | None = None,
        mean_value: torch.Tensor | None = None,
        noise_key: tuple[int, int, int] = (0, 0, 0),
    ) -> None:
        self.kind = kind
        self.positions = positions
        self.local = positions - offset
        self.rows = rows
        self.mean_sources = mean_sources  # absolute positions averaged by "mean" (offset 0)
        self.mean_value = mean_value  # [d] precomputed mean (when the block sees a suffix)
        self.noise_key = noise_key  # (seed, layer, n_prompt)
        self.thread = threading.get_ident()  # other threads' passes through the block: no-op
        self.noise: torch.Tensor | None = None  # [n_prompt, d] standard normal, row = position

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if threading.get_ident() != self.thread:
            return None
        hidden = _first(output)
        dev = hidden.device  # with a device_map, blocks live on several GPUs
        rows = torch.arange(hidden.shape[0], device=dev) if self.rows is None else self.rows.to(dev)
        local = self.local.to(dev)
        r_idx, p_idx = rows[:, None], local[None, :]
        new = hidden.clone()
        if self.kind == "skip":
            h_in = _block_input(args, kwargs)
            new[r_idx, p_idx] = h_in[r_idx, p_idx].to(new.dtype)
        elif self.kind == "mean":
            if self.mean_value is not None:
                value = self.mean_value.to(hidden.device)[None, None, :]
            else:
                sources = self.mean_sources.to(dev)
                value = hidden[rows][:, sources].float().mean(dim=1, keepdim=True)
            new[r_idx, p_idx] = value.expand(rows.numel(), local.numel(), -1).to(new.dtype)
        else:  # noise
            h = hidden[r_idx, p_idx].float()  # [r, P, d]
            rms = h.norm(dim=-1, keepdim=True) / math.sqrt(h.shape[-1])
            if self.noise is None:
                self.noise = _noise(*self.noise_key, h.shape[-1])
            eps = self.noise[self.positions.cpu()].to(h.device)  # [P, d]
            new[r_idx, p_idx] = (h + NOISE_SCALE * rms * eps).to(new.dtype)
        return _replace_first(output, new)


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
            logits = _forward(model, ids, n_gen, use_cache=False).logits[0, -n_gen:]
        else:
            first = _forward(model, ids[:, :split], 1, use_cache=True)
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
            extra = {_cache_kwarg(model): cache, "use_cache": True}
            logits = _forward(model, ids[:, split:], n_gen, **extra).logits[0, -n_gen:]
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
    device = _device(model)
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


@torch.no_grad()
def _intervened_logits(
    model: nn.Module,
    blocks: nn.ModuleList,
    readout: Callable[[torch.Tensor], torch.Tensor] | None,
    ids: torch.Tensor,
    n_prompt: int,
    n_gen: int,
    layers: list[int],
    positions: list[int],
    intervention: str,
    seed: int,
    batch_size: int | None,
    strategy: str,
    clean: _CleanRun,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield ``(chunk_layers, logits [n, G, V])``, one forward pass per chunk of layers."""
    device = ids.device
    seq_len = ids.shape[1]
    pos_t = torch.tensor(positions, dtype=torch.long, device=device)
    sources = _mean_sources(positions, n_prompt) if intervention == "mean" else []
    src_t = torch.tensor(sources, dtype=torch.long, device=device)
    split = clean.split if strategy == "prefix" else 0
    if strategy == "sequential":
        batch_size = 1
    elif batch_size is None:
        batch_size = _auto_batch_size(model, seq_len - split, seq_len, len(layers))

    for start in range(0, len(layers), batch_size):
        chunk = layers[start : start + batch_size]
        handles = []
        try:
            for i, layer in enumerate(chunk):
                # Row i of the batch belongs to block chunk[i] (in "prefix" it is the row
                # that joins at that block, the newest): only that block's hook edits it.
                rows = None if strategy == "sequential" else torch.tensor([i], device=device)
                mean_value = None
                if intervention == "mean" and strategy == "prefix":
                    mean_value = clean.outputs[layer][0, src_t].float().mean(dim=0)
                hook = _InterventionHook(
                    intervention, pos_t, rows, offset=split, mean_sources=src_t,
                    mean_value=mean_value, noise_key=(seed, layer, n_prompt),
                )  # fmt: skip
                handles.append(blocks[layer].register_forward_hook(hook, with_kwargs=True))
            if strategy == "prefix":
                hidden = _replay(blocks, clean, chunk[0], chunk)
                logits = readout(hidden[:, -n_gen:])
            else:
                logits = _model_logits(model, ids.expand(len(chunk), seq_len), n_gen)
        finally:
            for h in handles:
                h.remove()
        yield chunk, logits


def _check_sweep_options(intervention: str, strategy: str, seed: Any, batch_size: Any) -> None:
    """The sweep's plain options, checked before any (slow) model work."""
    if intervention not in INTERVENTIONS:
        raise UnknownInterventionError(
            f"unknown intervention {intervention!r}; choose one of {INTERVENTIONS}"
        )
    if strategy not in STRATEGIES:
        raise InterventionError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InterventionError(f"seed must be a non-negative int, got {seed!r}")
    if batch_size is not None and (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise InterventionError(f"batch_size must be a positive int or None, got {batch_size!r}")


def _sweep_ids(
    model: nn.Module,
    blocks: nn.ModuleList,
    readout: Callable[[torch.Tensor], torch.Tensor] | None,
    prompt_ids: Sequence[int],
    generated_ids: Sequence[int],
    *,
    layers: Iterable[int] | None = None,
    positions: str | Iterable[int] = (),
    template_positions: Sequence[int] = (),
    intervention: str = "skip",
    seed: int = 0,
    batch_size: int | None = None,
    strategy: str = "auto",
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Token-level sweep: numpy arrays for :class:`SweepResult` (the model-facing core).

    ``progress(fraction, message)`` hears of each batch of swept blocks (fraction: blocks done
    / blocks to sweep).
    """
    _check_sweep_options(intervention, strategy, seed, batch_size)
    n_blocks = len(blocks)
    chosen_layers = _resolve_layers(layers, n_blocks)
    n_prompt, n_gen = len(prompt_ids), len(generated_ids)
    if n_prompt < 1 or n_gen < 1:
        raise InterventionError("need at least one prompt token and one generated token")
    chosen_pos = _resolve_positions(positions, n_prompt, template_positions)
    if intervention == "mean":
        _mean_sources(chosen_pos, n_prompt)  # raise early

    device = _device(model)
    seq = [int(t) for t in prompt_ids] + [int(t) for t in generated_ids[:-1]]
    ids = torch.tensor([seq], dtype=torch.long, device=device)
    gen_t = torch.tensor([int(t) for t in generated_ids], dtype=torch.long, device=device)

    n_l = len(chosen_layers)
    kl = np.zeros((n_l, n_gen), dtype=np.float32)
    top = np.zeros((n_l, n_gen), dtype=np.int64)
    prob = np.zeros((n_l, n_gen), dtype=np.float32)
    row_of = {layer: i for i, layer in enumerate(chosen_layers)}

    if not chosen_pos:  # nothing to intervene on: every row is the clean run
        with torch.no_grad():
            clean_logits = _model_logits(model, ids, n_gen)[0]
        top[:] = clean_logits.argmax(-1).cpu().numpy()
        prob[:] = torch.softmax(clean_logits.float(), -1)[torch.arange(n_gen), gen_t].cpu().numpy()
        if progress is not None:
            progress(1.0, f"Swept {n_l}/{n_l} blocks")
        used = "none"
    else:
        used, clean = _prepare_clean(model, blocks, readout, ids, n_gen, chosen_pos, strategy)
        clean_logits = clean.logits
        chunks = _intervened_logits(
            model, blocks, readout, ids, n_prompt, n_gen, chosen_layers, chosen_pos,
            intervention, int(seed), batch_size, used, clean,
        )  # fmt: skip
        done = 0
        for chunk, logits in chunks:
            rows = [row_of[layer] for layer in chunk]
            p = clean_logits.unsqueeze(0).expand(len(rows), -1, -1).contiguous()
            kl[rows] = kl_div(p, logits.contiguous()).cpu().numpy()
            top[rows] = logits.argmax(-1).cpu().numpy()
            q_prob = torch.softmax(logits.float(), -1)[:, torch.arange(n_gen), gen_t]
            prob[rows] = q_prob.cpu().numpy()
            done += len(chunk)
            if progress is not None:
                progress(done / n_l, f"Swept {done}/{n_l} blocks")
    clean_prob = torch.softmax(clean_logits.float(), -1)[torch.arange(n_gen), gen_t]
    return {
        "layers": np.asarray(chosen_layers, dtype=np.int64),
        "positions": np.asarray(chosen_pos, dtype=np.int64),
        "kl": kl,
        "top_ids_intervened": top,
        "generated_prob_clean": clean_prob.cpu().numpy().astype(np.float32),
        "generated_prob_intervened": prob,
        "num_blocks": n_blocks,
        "strategy": used,
    }


# --------------------------------------------------------------------------------------
# Public API (text level)
# --------------------------------------------------------------------------------------


def _encode(
    tokenizer: Any,
    prompt: str | Sequence[dict[str, str]],
    chat: bool,
    system: str | None,
    max_length: int | None = None,
) -> Any:
    from lenskit.prompts import encode_prompt

    return encode_prompt(tokenizer, prompt, chat=chat, system=system, max_length=max_length)


def _encode_for_generation(
    model: nn.Module,
    tokenizer: Any,
    prompt: str | Sequence[dict[str, str]],
    chat: bool,
    system: str | None,
    n_new: int,
    *,
    reads_last: bool = False,
    what: str | None = None,
) -> tuple[Any, list[int]]:
    """Encode the prompt and check that prompt + generation fits the model's context.

    Generating (and the sweep) never feeds the last generated token back: the model reads
    n_prompt + n_new - 1 tokens. ``reads_last``: the caller reads all n_prompt + n_new (the
    lens over the generation). ``what`` names n_new in the error (default: max_new_tokens).
    """
    from lenskit.models import context_length

    ctx = context_length(model)
    enc = _encode(tokenizer, prompt, chat, system, max_length=ctx)
    prompt_ids = _ids_list(enc.input_ids)
    read = len(prompt_ids) + n_new - (0 if reads_last else 1)
    if ctx is not None and read > ctx:
        raise GenerationLengthError(
            f"the prompt is {len(prompt_ids)} tokens; with {what or f'max_new_tokens={n_new}'} "
            f"the model would read {read}, more than its context of {ctx} tokens: shorten the "
            "prompt or generate fewer tokens"
        )
    return enc, prompt_ids


def _ids_list(ids: Any) -> list[int]:
    if isinstance(ids, torch.Tensor):
        return [int(i) for i in ids.reshape(-1).tolist()]
    return [int(i) for i in np.asarray(ids).reshape(-1).tolist()]


def intervention_sweep(
    model: nn.Module,
    tokenizer: Any,
    prompt: str | Sequence[dict[str, str]],
    *,
    chat: bool = True,
    system: str | None = None,
    max_new_tokens: int = 5,
    layers: Iterable[int] | None = None,
    positions: Literal["template", "all-prompt"] | Iterable[int] = "template",
    intervention: Literal["skip", "mean", "noise"] = "skip",
    seed: int = 0,
    batch_size: int | None = None,
    progress: ProgressFn | bool | None = None,
    strategy: Literal["auto", "prefix", "batched", "sequential"] = "auto",
) -> SweepResult:
    """Which blocks, at which prompt positions, does the generated answer depend on?

    1. Clean run: the prompt (wrapped in the chat template when ``chat``) is encoded and
       ``max_new_tokens`` tokens are generated greedily (argmax, KV cache; identical to
       ``model.generate(do_sample=False)``). Generation stops early only at an EOS token of
       the model's generation config, which is then the last generated token, so
       ``G = max_new_tokens`` unless EOS came first.
    2. For every swept block ``l`` (0-based, ``decoder_layers(model)[l]``) the clean sequence
       (prompt + Gen0..Gen{G-2}, teacher-forced, no KV cache) is run again with the
       intervention applied to block ``l``'s output at the chosen PROMPT positions, and
       ``kl[l, j]`` = KL(p_clean || p_intervened) in nats of the next-token distribution at
       generated position j (the position that predicted Gen j: Gen0 at the last prompt
       position). Generated tokens themselves are never intervened on.

    Interventions (h_in, h_out: block l's input and output at position t, width d):

    * ``"skip"``: block l's update is removed: ``h_out[t] := h_in[t]`` (attention and MLP
      of block l add nothing at t; within block l the other positions still attend to t's
      clean keys/values; later blocks read the edited residual).
    * ``"mean"``: ``h_out[t] := mean of h_out[s]`` over the prompt positions s that are NOT
      intervened on, excluding position 0 (the first token's residual is an outlier, the
      attention sink, and would dominate the mean); computed per run from block l's own
      (clean) outputs. An error when no such position exists.
    * ``"noise"``: ``h_out[t] += NOISE_SCALE * rms(h_out[t]) * eps``, ``eps ~ N(0, I_d)``,
      ``rms(x) = ||x||_2 / sqrt(d)``, so the noise has expected norm ``NOISE_SCALE`` (= 1.0)
      times the residual norm at t. ``eps`` is drawn from a generator seeded by
      ``(seed, l)`` for all prompt positions and indexed by t: the same seed gives the same
      result, whatever the batching or the other selected positions.

    Positions: ``"template"`` = the template tokens of the encoded prompt (those the chat
    template adds between the end of the user's text and the answer; an error when there
    are none, as with ``chat=False``), ``"all-prompt"`` = every prompt position, or explicit
    prompt indices ``0 <= t < T``. An explicit empty list is valid and gives KL = 0
    everywhere (no forward pass is intervened).

    Computation: one batch row per swept block (``batch_size`` rows per forward pass), with
    a forward hook on each swept block that edits only its own row. Nothing before block l or
    before the first intervened position t0 differs from the clean run, so (strategy
    "prefix") a row starts at its own block from the clean hidden state and covers positions
    t0.. only, the earlier positions' keys/values coming from the clean run's KV cache: a
    sweep over all L blocks costs about L(L+1)/2 block evaluations over T - t0 positions
    instead of L^2 over T. Only the G needed positions are read out (never ``[B, T, V]``
    logits). All strategies agree to float rounding (tested against "sequential").

    Args:
        model: a causal LM in eval mode (``lenskit.load_model``).
        tokenizer: its tokenizer.
        prompt: the user's text.
        chat: wrap the prompt in the tokenizer's chat template.
        system: optional system message (chat only).
        max_new_tokens: 1..64 tokens to generate.
        layers: block indices to sweep, each in ``0..L-1`` (None = all; sorted, duplicates
            dropped).
        positions: ``"template"``, ``"all-prompt"`` or a list of prompt indices.
        intervention: ``"skip"``, ``"mean"`` or ``"noise"``.
        seed: non-negative seed of the ``"noise"`` intervention.
        batch_size: swept blocks per forward pass (None = as many as fit a memory budget:
            512 MiB of activations on CPU, a quarter of the free memory on CUDA).
        progress: ``progress(fraction, message)`` callback (fraction of the blocks swept, as
            for :func:`lenskit.run_lens`), True for a tqdm bar on stderr, or None.
        strategy: ``"auto"`` (default: ``"prefix"`` when the model's blocks feed each other
            directly and the read-out reproduces its logits, else ``"batched"``),
            ``"prefix"`` (batched, each row starting at its own block and at the first
            intervened position; without a replayable KV cache it covers all positions),
            ``"batched"`` (full forward passes, one row per block) or ``"sequential"``
            (one full forward pass per block: the reference).

    Returns:
        :class:`SweepResult` with ``kl`` ``[nL, G]`` in nats.

    Raises:
        GenerationLengthError: ``max_new_tokens`` outside 1..64, or prompt + generation
            longer than the model's context.
        lenskit.prompts.PromptError: empty prompt, no chat template with ``chat=True``.
        LayerSelectionError: ``layers=[]`` or an index outside ``0..L-1``.
        PositionSelectionError: unknown mode, index outside the prompt, or "mean" with no
            position left to average.
        UnknownInterventionError: ``intervention`` not in :data:`INTERVENTIONS`.
        InterventionError: bad ``seed``, ``batch_size`` or ``strategy`` (all of these are
            ``ValueError`` subclasses).
    """
    from lenskit.models import (
        check_progress,
        decoder_layers,
        find_readout,
        model_name,
        progress_reporter,
    )

    n_new = _check_max_new_tokens(max_new_tokens)
    _check_sweep_options(intervention, strategy, seed, batch_size)
    check_progress(progress)
    blocks = decoder_layers(model)
    _resolve_layers(layers, len(blocks))  # fail before the (slow) generation
    enc, prompt_ids = _encode_for_generation(model, tokenizer, prompt, chat, system, n_new)
    template = _ids_list(getattr(enc, "template_positions", []))
    chosen_pos = _resolve_positions(positions, len(prompt_ids), template)
    if intervention == "mean":
        _mean_sources(chosen_pos, len(prompt_ids))

    # The bar starts after the checks: an error is then printed on a line of its own.
    report, close = progress_reporter(progress, "Sweep")
    try:
        report(0.0, f"Generating {n_new} tokens")
        generated = greedy_generate(
            model, prompt_ids, n_new, eos_token_ids=_eos_ids(model, tokenizer)
        )
        try:
            readout = find_readout(model).logits
        except Exception:  # noqa: BLE001 - no read-out: the full-forward strategies still work
            readout = None
        report(0.0, "Clean run")
        core = _sweep_ids(
            model, blocks, readout, prompt_ids, generated,
            layers=layers, positions=positions, template_positions=template,
            intervention=intervention, seed=seed, batch_size=batch_size, strategy=strategy,
            progress=report,
        )  # fmt: skip
    finally:
        if close is not None:
            close()
    core.pop("strategy")
    gen_tokens = _tokens(tokenizer, generated)
    byte_level = byte_level_vocabulary(tokenizer)
    top = core["top_ids_intervened"]
    top_tokens = np.asarray(_tokens(tokenizer, top.ravel().tolist()), dtype=object)
    return SweepResult(
        generated_ids=np.asarray(generated, dtype=np.int64),
        generated_tokens=gen_tokens,
        generated_display_tokens=[format_token(t, byte_level=byte_level) for t in gen_tokens],
        top_tokens_intervened=top_tokens.reshape(top.shape),
        prompt_token_ids=prompt_ids,
        prompt_tokens=_tokens(tokenizer, prompt_ids),
        intervention=intervention,
        seed=seed,
        max_new_tokens=n_new,
        model_name=model_name(model),
        prompt=enc.prompt,
        chat=chat,
        system=system,
        byte_level=byte_level,
        **core,
    )


def lens_on_generation(
    model: nn.Module,
    tokenizer: Any,
    prompt: str | Sequence[dict[str, str]],
    *,
    chat: bool = True,
    system: str | None = None,
    max_new_tokens: int = 5,
    top_k: int = 5,
    generated_ids: Sequence[int] | None = None,
) -> tuple[LensResult, int]:
    """Logit lens over the prompt followed by its greedy continuation.

    Generates like :func:`intervention_sweep` (greedy, stops early only at EOS), then runs the
    logit lens (the same read-out as :func:`lenskit.run_lens`) over the T + G tokens
    prompt + Gen0..Gen{G-1}. Gen j is PREDICTED at position ``n_prompt - 1 + j`` (the column
    to show for "Gen j" in entropy / KL(out || layer) heatmaps, matching the sweep's
    columns) and sits at position ``n_prompt + j``.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        prompt: the user's text.
        chat: wrap the prompt in the chat template.
        system: optional system message (chat only).
        max_new_tokens: 1..64 tokens to generate.
        top_k: top tokens kept per cell.
        generated_ids: the continuation when it is known already (e.g.
            ``SweepResult.generated_ids`` of the same prompt): 1..64 token ids, used instead
            of generating (``max_new_tokens`` is then ignored).

    Returns:
        ``(result, n_prompt)``: a :class:`~lenskit.lens.LensResult` over T + G positions
        (``template_positions`` are the prompt's; ``prompt`` is the user's text) and T, the
        number of prompt tokens.

    Raises:
        GenerationLengthError: ``max_new_tokens`` outside 1..64 or past the context.
        ValueError: bad ``top_k``.
    """
    from lenskit import lens as _lens
    from lenskit.models import decoder_layers, find_readout, model_name
    from lenskit.prompts import special_token_ids

    readout = find_readout(model)
    vocab = readout.vocab_size
    if generated_ids is None:
        n_new = _check_max_new_tokens(max_new_tokens)
    else:
        given = _ids_list(generated_ids)
        if not 1 <= len(given) <= MAX_NEW_TOKENS:
            raise GenerationLengthError(
                f"generated_ids must hold 1..{MAX_NEW_TOKENS} token ids, got {len(given)}"
            )
        n_new = len(given)
        bad = [i for i in given if not 0 <= i < vocab]
        if bad:
            raise InterventionError(
                f"generated_ids {_few(bad)} are outside the vocabulary [0, {vocab})"
            )
    if (
        isinstance(top_k, bool)
        or not isinstance(top_k, (int, np.integer))
        or not 1 <= top_k <= vocab
    ):
        raise ValueError(f"top_k must be an integer in [1, {vocab}], got {top_k!r}")
    enc, prompt_ids = _encode_for_generation(
        model,
        tokenizer,
        prompt,
        chat,
        system,
        n_new,
        reads_last=True,
        what=None if generated_ids is None else f"{n_new} generated tokens",
    )
    if generated_ids is None:
        generated = greedy_generate(
            model, prompt_ids, n_new, eos_token_ids=_eos_ids(model, tokenizer)
        )
    else:
        generated = given
    all_ids = prompt_ids + generated
    n_layers = len(decoder_layers(model))
    ids = torch.tensor([all_ids], dtype=torch.long, device=_device(model))
    with torch.inference_mode():
        hidden, model_last = _lens._forward(model, ids)
        stats = _lens._read_out(
            readout, hidden, top_k, None, None, readout.unembed.weight.device, lambda f, m: None
        )
        _lens._check_out_row(readout, stats.pop("last_out_logits"), model_last)
    tokens = _tokens(tokenizer, all_ids)
    byte_level = byte_level_vocabulary(tokenizer)
    specials = special_token_ids(tokenizer)
    top_ids = stats["top_ids"]
    result = LensResult(
        token_ids=np.asarray(all_ids, dtype=np.int64),
        tokens=np.asarray(tokens, dtype=object),
        display_tokens=[format_token(t, byte_level=byte_level) for t in tokens],
        layer_names=_lens.layer_names(n_layers),
        entropy=stats["entropy"],
        kl_to_final=stats["kl_to_final"],
        top_ids=top_ids,
        top_tokens=_lens._vocab_strings(tokenizer, top_ids),
        top_probs=stats["top_probs"],
        is_special=[i in specials for i in all_ids],
        template_positions=_ids_list(enc.template_positions),
        vocab_size=vocab,
        model_name=model_name(model),
        prompt=enc.prompt,
        chat=chat,
        system=system,
        byte_level=byte_level,
    )
    return result, len(prompt_ids)


@torch.no_grad()
def _readout_rows(
    model: nn.Module, ids: torch.Tensor, position: int
) -> tuple[list[str], torch.Tensor]:
    """Logit-lens logits ``[R, V]`` of every row at one position (row "out" = model logits)."""
    from lenskit.models import decoder_layers, find_readout

    blocks = decoder_layers(model)
    readout = find_readout(model)
    n_blocks = len(blocks)
    states: list[Any] = [None] * n_blocks  # states[i] = row i: emb, then block outputs 1..L-1

    thread = threading.get_ident()

    def emb_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if threading.get_ident() == thread:
            states[0] = _block_input(args, kwargs)[0, position]

    handles = [blocks[0].register_forward_pre_hook(emb_hook, with_kwargs=True)]
    for i in range(n_blocks - 1):

        def post(module: nn.Module, args: tuple, out: Any, i: int = i) -> None:
            if threading.get_ident() == thread:
                states[i + 1] = _first(out)[0, position]

        handles.append(blocks[i].register_forward_hook(post))
    try:
        out_logits = _model_logits(model, ids, ids.shape[1] - position)[0, 0]
    finally:
        for h in handles:
            h.remove()
    dev = readout.unembed.weight.device  # the states may come from several GPUs
    rows = readout.logits(torch.stack([s.to(dev) for s in states]))  # [L, V]
    names = ["emb", *[str(i) for i in range(1, n_blocks)], "out"]
    return names, torch.cat([rows, out_logits[None].to(rows.dtype)], dim=0)


def layer_pairwise_kl(
    model: nn.Module,
    tokenizer: Any,
    prompt: str | Sequence[dict[str, str]],
    position: int,
    *,
    chat: bool = True,
    system: str | None = None,
) -> tuple[list[str], np.ndarray]:
    """KL between the logit-lens distributions of every pair of rows at one position.

    Rows (R = L + 1) as in :func:`lenskit.run_lens`: "emb" (the embedding output read out),
    "1".."L-1" (block outputs read out), "out" (the model's own logits, exactly).

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        prompt: the user's text (wrapped in the chat template when ``chat``).
        position: index into the encoded prompt; negative counts from the end (-1 = last).
        chat: wrap the prompt in the chat template.
        system: optional system message.

    Returns:
        ``(layer_names [R], kl [R, R])`` with ``kl[i, j]`` = KL(p_row_i || p_row_j) float32
        nats; the diagonal is 0 and row/column "out" is the model's own distribution.

    Raises:
        PositionSelectionError: ``position`` outside ``-T..T-1``.
        PromptError: empty prompt, or longer than the model's context.
    """
    from lenskit.models import context_length

    enc = _encode(tokenizer, prompt, chat, system, max_length=context_length(model))
    prompt_ids = _ids_list(enc.input_ids)
    n = len(prompt_ids)
    if isinstance(position, (bool, np.bool_)) or not isinstance(position, (int, np.integer)):
        raise PositionSelectionError(f"position must be an int, got {position!r}")
    if not -n <= int(position) < n:
        raise PositionSelectionError(
            f"position {position} out of range: the prompt has {n} tokens (-{n}..{n - 1})"
        )
    pos = int(position) % n
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=_device(model))
    names, logits = _readout_rows(model, ids, pos)
    kl = pairwise_kl(logits, logits)
    kl.fill_diagonal_(0.0)  # KL(p || p) = 0 exactly; the GEMM form leaves rounding there
    return names, kl.cpu().numpy().astype(np.float32)
