"""What a user asks lenskit to compute, with every range, mode and default defined once.

The app, the CLI and the Python API all build a request (:class:`LensRequest`,
:class:`SweepRequest`, :class:`PairwiseRequest`) and call the same library function, so each
rule and its message live here once. A request checks what it can on its own when it is made;
the checks that need the model or the encoded prompt (the vocabulary, the number of blocks,
the prompt's length, the context) are the ``check_*`` / ``resolve_*`` functions below, which
the library calls once it knows them. Every failure is an :class:`~lenskit.errors.InputError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lenskit.errors import (
    GenerationLengthError,
    InputError,
    InterventionError,
    LayerSelectionError,
    PositionSelectionError,
    TargetError,
    UnknownInterventionError,
)

__all__ = [
    "BATCH_SIZE",
    "CHUNK_SIZE",
    "DATASET_BATCH_SIZE",
    "DATASET_NEW_TOKENS",
    "DATASET_SEED",
    "DATASET_TOP_K",
    "USER_TOKENS",
    "DatasetRequest",
    "MAX_NEW_TOKENS",
    "POSITION_MODES",
    "SEED",
    "STRATEGIES",
    "TOP_K",
    "IntOption",
    "LensRequest",
    "PairwiseRequest",
    "SweepRequest",
    "check_context",
    "check_position",
    "check_target_id",
    "few",
    "resolve_layers",
    "resolve_positions",
]


@dataclass(frozen=True)
class IntOption:
    """An integer option: its name, range, default and help, the one source of its message.

    Attributes:
        name: the Python keyword (``top_k``); the CLI's flag is ``--top-k``.
        label: the app's label.
        lo: least value.
        hi: largest value, or None for no upper bound.
        default: the default (None: chosen by lenskit).
        help: one line for the CLI's ``--help`` and the app's tooltip.
    """

    name: str
    label: str
    lo: int
    hi: int | None
    default: int | None
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        """``"an integer in 1..50"`` / ``"an integer >= 1"``."""
        return (
            f"an integer in {self.lo}..{self.hi}"
            if self.hi is not None
            else (f"an integer >= {self.lo}")
        )

    def check(self, value: Any, error: type[InputError] = InputError) -> int:
        """``value`` as an int, or ``error`` saying what is allowed."""
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise error(f"{self.name} must be {self.describe()}, got {value!r}")
        if value < self.lo or (self.hi is not None and value > self.hi):
            raise error(f"{self.name} must be {self.describe()}, got {value}")
        return int(value)

    def check_optional(self, value: Any, error: type[InputError] = InputError) -> int | None:
        """As :meth:`check`, with None allowed (lenskit chooses)."""
        return None if value is None else self.check(value, error)


TOP_K = IntOption("top_k", "Top-k", 1, 50, 5, "top tokens kept per cell (the most probable first)")
MAX_NEW_TOKENS = IntOption(
    "max_new_tokens", "Tokens to generate", 1, 64, 5, "greedy tokens generated after the prompt"
)
SEED = IntOption("seed", "Noise seed", 0, 2**31 - 1, 0, "seed of the 'noise' intervention")
BATCH_SIZE = IntOption(
    "batch_size", "Batch size", 1, None, None, "swept blocks per forward pass (default: fit memory)"
)
CHUNK_SIZE = IntOption(
    "chunk_size", "Chunk size", 1, None, None, "read-out cells per chunk (default: ~256 MiB)"
)

USER_TOKENS = IntOption(
    "user_tokens", "User tokens", 1, 16, 3, "last tokens of the user's text read as columns -k..-1"
)
#: The dataset mode's defaults: the same ranges as the single-prompt views.
DATASET_TOP_K = replace(TOP_K, default=10)
DATASET_NEW_TOKENS = replace(
    MAX_NEW_TOKENS, default=24, help="greedy reply tokens per prompt (stops at end of turn)"
)
DATASET_SEED = replace(
    SEED,
    label="Control seed",
    help="seed of the control tokens' derangement (which prompt's answer is another's control)",
)
DATASET_BATCH_SIZE = IntOption(
    "batch_size", "Batch size", 1, 256, 16, "prompts per forward pass and per generation"
)

#: Named position selections of a sweep (besides explicit prompt indices), with their help.
POSITION_MODES: dict[str, str] = {
    "template": "the chat-template tokens between the question and the answer",
    "all-prompt": "every prompt token",
}
#: How a sweep is computed; all give the same numbers up to float rounding.
STRATEGIES = ("auto", "prefix", "batched", "sequential")


def few(values: Sequence[Any], shown: int = 6) -> str:
    """``values`` for an error message, elided past ``shown`` (a typo can list millions)."""
    if len(values) <= shown:
        return str(list(values))
    head = ", ".join(str(v) for v in values[: shown // 2])
    tail = ", ".join(str(v) for v in values[-(shown // 2) :])
    return f"[{head}, ..., {tail}] ({len(values)} indices)"


def _int_list(values: Iterable[Any], what: str, error: type[InputError]) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise error(f"{what} must be integers, got {v!r} ({type(v).__name__})")
        out.append(int(v))
    return out


def _prompt_fields(prompt: Any, chat: Any, system: Any) -> None:
    if not isinstance(chat, (bool, np.bool_)):
        raise InputError(f"chat must be True or False, got {chat!r}")
    if system is not None and not isinstance(system, str):
        raise InputError(f"The system prompt must be text (a str), got {type(system).__name__}.")


def _layers_field(layers: Any) -> tuple[int, ...] | None:
    if layers is None:
        return None
    if isinstance(layers, (str, bytes)):
        raise LayerSelectionError(f"layers must be block indices, got {layers!r}")
    if isinstance(layers, (int, np.integer)):
        layers = [layers]
    chosen = _int_list(layers, "layers", LayerSelectionError)
    if not chosen:
        raise LayerSelectionError("layers is empty: select at least one block (None = all)")
    return tuple(chosen)


def _positions_field(positions: Any) -> str | tuple[int, ...]:
    if isinstance(positions, str):
        if positions not in POSITION_MODES:
            raise PositionSelectionError(
                f"positions must be one of {tuple(POSITION_MODES)} or a list of prompt "
                f"indices, got {positions!r}"
            )
        return positions
    if isinstance(positions, (int, np.integer)):
        positions = [positions]
    return tuple(_int_list(positions, "positions", PositionSelectionError))


@dataclass(frozen=True)
class LensRequest:
    """One logit-lens run: every row read out at every position of one prompt.

    Attributes:
        prompt: the user's text (or chat messages, see :func:`lenskit.encode_prompt`).
        chat: wrap the prompt in the model's chat template.
        system: optional system prompt (chat only).
        top_k: top tokens kept per cell, :data:`TOP_K`.
        target: optional single-token target (text such as ``" Canberra"``, or a token id).
        chunk_size: read-out cells per chunk, :data:`CHUNK_SIZE` (None: ~256 MiB of logits).
        lens: a lens name (``"logit"``) or a :class:`~lenskit.lens.lenses.Lens`.
        sublayers: also read the residual stream after each block's attention (rows
            ``emb, 1.attn, 1, ..., L.attn, out``; see :func:`lenskit.run_lens`).
    """

    prompt: Any
    chat: bool = True
    system: str | None = None
    top_k: int = TOP_K.default
    target: str | int | None = None
    chunk_size: int | None = None
    lens: Any = "logit"
    sublayers: bool = False

    def __post_init__(self) -> None:
        _prompt_fields(self.prompt, self.chat, self.system)
        TOP_K.check(self.top_k)
        CHUNK_SIZE.check_optional(self.chunk_size)
        if self.target is not None and (
            isinstance(self.target, (bool, np.bool_))
            or not isinstance(self.target, (str, int, np.integer))
        ):
            raise TargetError(
                "The target must be text (one token, e.g. ' Canberra') or a token id, got "
                f"{type(self.target).__name__}."
            )
        if not isinstance(self.sublayers, (bool, np.bool_)):
            raise InputError(f"sublayers must be True or False, got {self.sublayers!r}")
        from lenskit.lens.lenses import check_lens

        check_lens(self.lens)


@dataclass(frozen=True)
class SweepRequest:
    """One intervention sweep (see :func:`lenskit.intervention_sweep` for the definitions).

    Attributes:
        prompt, chat, system: as in :class:`LensRequest`.
        max_new_tokens: greedy tokens to generate, :data:`MAX_NEW_TOKENS`.
        layers: swept block indices (0-based), None for all.
        positions: a mode of :data:`POSITION_MODES` or prompt indices.
        intervention: a name of :data:`lenskit.INTERVENTIONS`.
        seed: :data:`SEED`, for the "noise" intervention.
        batch_size: :data:`BATCH_SIZE` (None: fit a memory budget).
        strategy: one of :data:`STRATEGIES`.
        generation_lens: also read the lens over prompt + generation (the report's second
            view); ``top_k`` is its top-k.
        top_k: :data:`TOP_K` of the lens over the generation.
        lens: the lens of that view.
    """

    prompt: Any
    chat: bool = True
    system: str | None = None
    max_new_tokens: int = MAX_NEW_TOKENS.default
    layers: tuple[int, ...] | None = None
    positions: str | tuple[int, ...] = "template"
    intervention: str = "skip"
    seed: int = SEED.default
    batch_size: int | None = None
    strategy: str = "auto"
    generation_lens: bool = False
    top_k: int = TOP_K.default
    lens: Any = "logit"

    def __post_init__(self) -> None:
        _prompt_fields(self.prompt, self.chat, self.system)
        MAX_NEW_TOKENS.check(self.max_new_tokens, GenerationLengthError)
        object.__setattr__(self, "layers", _layers_field(self.layers))
        object.__setattr__(self, "positions", _positions_field(self.positions))
        from lenskit.interventions.registry import get_intervention

        get_intervention(self.intervention)
        if self.strategy not in STRATEGIES:
            raise InterventionError(
                f"unknown strategy {self.strategy!r}; choose one of {STRATEGIES}"
            )
        SEED.check(self.seed, InterventionError)
        BATCH_SIZE.check_optional(self.batch_size, InterventionError)
        TOP_K.check(self.top_k)
        from lenskit.lens.lenses import check_lens

        check_lens(self.lens)


@dataclass(frozen=True)
class PairwiseRequest:
    """KL between every pair of read-out rows at one position of one prompt.

    Attributes:
        prompt, chat, system: as in :class:`LensRequest`.
        position: index into the encoded prompt; negative counts from the end (-1 = last).
        lens: the lens's name.
    """

    prompt: Any
    position: int = -1
    chat: bool = True
    system: str | None = None
    lens: Any = "logit"

    def __post_init__(self) -> None:
        _prompt_fields(self.prompt, self.chat, self.system)
        if isinstance(self.position, (bool, np.bool_)) or not isinstance(
            self.position, (int, np.integer)
        ):
            raise PositionSelectionError(f"position must be an int, got {self.position!r}")
        from lenskit.lens.lenses import check_lens

        check_lens(self.lens)


@dataclass(frozen=True)
class DatasetRequest:
    """The options of one dataset run (see :func:`lenskit.run_dataset`); the prompts are
    given separately.

    Attributes:
        user_tokens: :data:`USER_TOKENS`, the user's last tokens read (columns -k..-1).
        max_new_tokens: :data:`DATASET_NEW_TOKENS`, the greedy reply's length.
        top_k: :data:`DATASET_TOP_K`, top tokens kept per cell.
        sweep: also run the causal check (skip at the template positions, every block).
        batch_size: :data:`DATASET_BATCH_SIZE`.
        seed: :data:`DATASET_SEED`, the control tokens' derangement.
        lens: a lens name or a :class:`~lenskit.lens.lenses.Lens`.
    """

    user_tokens: int = USER_TOKENS.default
    max_new_tokens: int = DATASET_NEW_TOKENS.default
    top_k: int = DATASET_TOP_K.default
    sweep: bool = False
    batch_size: int = DATASET_BATCH_SIZE.default
    seed: int = DATASET_SEED.default
    lens: Any = "logit"

    def __post_init__(self) -> None:
        USER_TOKENS.check(self.user_tokens)
        DATASET_NEW_TOKENS.check(self.max_new_tokens, GenerationLengthError)
        DATASET_TOP_K.check(self.top_k)
        if not isinstance(self.sweep, (bool, np.bool_)):
            raise InputError(f"sweep must be True or False, got {self.sweep!r}")
        DATASET_BATCH_SIZE.check(self.batch_size)
        DATASET_SEED.check(self.seed)
        from lenskit.lens.lenses import check_lens

        check_lens(self.lens)

    def options(self) -> dict[str, Any]:
        """The options as plain JSON values (the lens by name and identity): what a run
        directory's state records, so that a resumed run must use the same ones."""
        from lenskit.lens.lenses import lens_identity, lens_name

        return {
            "user_tokens": self.user_tokens,
            "max_new_tokens": self.max_new_tokens,
            "top_k": self.top_k,
            "sweep": bool(self.sweep),
            "seed": self.seed,
            "lens": lens_name(self.lens),
            "lens_identity": lens_identity(self.lens),
        }


# --------------------------------------------------------------------------------------------
# Rules that need the model or the encoded prompt
# --------------------------------------------------------------------------------------------


def check_target_id(target_id: int, vocab: int) -> int:
    """``target_id`` if it is inside the vocabulary ``[0, vocab)``, else a TargetError."""
    if not 0 <= target_id < vocab:
        raise TargetError(f"target id {target_id} is outside the vocabulary [0, {vocab})")
    return target_id


def check_top_k_vocab(top_k: int, vocab: int) -> int:
    """``top_k`` when the vocabulary has that many tokens."""
    if top_k > vocab:
        raise InputError(f"top_k must be at most the vocabulary size {vocab}, got {top_k}")
    return top_k


def resolve_layers(layers: Iterable[int] | None, n_blocks: int) -> list[int]:
    """Swept block indices, sorted and unique; None means all ``0..n_blocks-1``."""
    chosen = _layers_field(layers)
    if chosen is None:
        return list(range(n_blocks))
    bad = [i for i in chosen if not 0 <= i < n_blocks]
    if bad:
        raise LayerSelectionError(
            f"layer indices {few(bad)} out of range: the model has {n_blocks} blocks "
            f"(0..{n_blocks - 1})"
        )
    return sorted(set(chosen))


def resolve_positions(
    positions: str | Iterable[int], n_prompt: int, template_positions: Sequence[int]
) -> list[int]:
    """Intervened prompt positions, sorted and unique."""
    chosen = _positions_field(positions)
    if chosen == "template":
        if len(template_positions) == 0:
            # The default mode on a raw prompt would sweep nothing and report KL = 0.
            raise PositionSelectionError(
                "positions='template' selects nothing: this prompt has no chat-template "
                "tokens (raw text). Use 'all-prompt' or explicit prompt indices."
            )
        return sorted({int(p) for p in template_positions})
    if chosen == "all-prompt":
        return list(range(n_prompt))
    bad = [p for p in chosen if not 0 <= p < n_prompt]
    if bad:
        raise PositionSelectionError(
            f"positions {few(bad)} out of range: the prompt has {n_prompt} tokens "
            f"(0..{n_prompt - 1})"
        )
    return sorted(set(chosen))


def check_position(position: int, n: int) -> int:
    """One position ``-n <= position < n`` of an ``n``-token prompt, as ``0..n-1``."""
    if isinstance(position, (bool, np.bool_)) or not isinstance(position, (int, np.integer)):
        raise PositionSelectionError(f"position must be an int, got {position!r}")
    if not -n <= int(position) < n:
        raise PositionSelectionError(
            f"position {position} out of range: the prompt has {n} tokens (-{n}..{n - 1})"
        )
    return int(position) % n


def check_context(
    n_prompt: int, n_new: int, context: int | None, *, reads_last: bool, what: str | None = None
) -> None:
    """Prompt + generation must fit the model's context.

    Generating (and the sweep) never feeds the last generated token back: the model reads
    ``n_prompt + n_new - 1`` tokens. ``reads_last``: the caller reads all ``n_prompt + n_new``
    (the lens over the generation). ``what`` names ``n_new`` in the message.
    """
    read = n_prompt + n_new - (0 if reads_last else 1)
    if context is not None and read > context:
        raise GenerationLengthError(
            f"the prompt is {n_prompt} tokens; with {what or f'max_new_tokens={n_new}'} "
            f"the model would read {read}, more than its context of {context} tokens: shorten "
            "the prompt or generate fewer tokens"
        )


def check_generated_ids(ids: Sequence[int], vocab: int) -> list[int]:
    """A known continuation: 1..MAX_NEW_TOKENS ids inside the vocabulary."""
    given = [int(i) for i in ids]
    if not MAX_NEW_TOKENS.lo <= len(given) <= MAX_NEW_TOKENS.hi:
        raise GenerationLengthError(
            f"generated_ids must hold {MAX_NEW_TOKENS.lo}..{MAX_NEW_TOKENS.hi} token ids, "
            f"got {len(given)}"
        )
    bad = [i for i in given if not 0 <= i < vocab]
    if bad:
        raise InterventionError(f"generated_ids {few(bad)} are outside the vocabulary [0, {vocab})")
    return given


def unknown_intervention(name: Any, known: Sequence[str]) -> UnknownInterventionError:
    """The error for an intervention name that is not registered."""
    return UnknownInterventionError(f"unknown intervention {name!r}; choose one of {tuple(known)}")
