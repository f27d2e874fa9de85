"""The lens views: one prompt (:func:`run_lens`), a prompt and its continuation
(:func:`lens_on_generation`) and every pair of rows at one position (:func:`layer_pairwise_kl`).

Each builds a request (:mod:`lenskit.requests`), validated once, and reads out through the one
engine (:class:`~lenskit.lens.readout.ReadoutEngine`). Rows and definitions:
docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lenskit.lens.lenses import Lens
from lenskit.lens.readout import ReadoutEngine
from lenskit.model.architecture import context_length, model_name
from lenskit.model.forward_pass import eos_token_ids, ids_list
from lenskit.model.generate import greedy_generate
from lenskit.ops import pairwise_kl
from lenskit.progress import Progress, progress_reporter, silent
from lenskit.requests import (
    LensRequest,
    PairwiseRequest,
    check_context,
    check_generated_ids,
    check_position,
    check_target_id,
    check_top_k_vocab,
)
from lenskit.results import GenerationLens, LensResult, PairwiseKL
from lenskit.text.prompts import EncodedPrompt, encode_prompt, special_token_ids
from lenskit.text.targets import target_token_id
from lenskit.text.tokens import byte_level_vocabulary, format_token, token_strings, vocab_strings

__all__ = [
    "layer_pairwise_kl",
    "lens_on_generation",
    "lens_result",
    "pairwise_result",
    "run_lens",
]


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
    lens: str | Lens = "logit",
    sublayers: bool = False,
    progress: Progress | bool | None = None,
) -> LensResult:
    """Run the lens on one prompt: every row read out at every position.

    One forward pass (``output_hidden_states=True``); the read-out then streams over chunks of
    positions, so at most ``chunk_size x V`` logits exist at a time. Row "out" is the model's
    own logits (the last hidden state through the unembedding and the model's logit scaling /
    soft-capping only).

    Args:
        model: a causal LM from :func:`lenskit.load_model` (any device/dtype).
        tokenizer: its tokenizer.
        prompt: the user's text (or chat messages, see :func:`lenskit.encode_prompt`).
        chat: wrap the prompt in the chat template (``add_generation_prompt=True``).
        system: optional system prompt (chat only).
        top_k: top tokens kept per cell (:data:`lenskit.requests.TOP_K`, at most V).
        target: optional single-token target string (e.g. ``" Canberra"``) or token id.
        chunk_size: cells (row x position logit vectors) per chunk, rounded to whole
            positions (all R rows of a position together); default ~256 MiB of fp32 logits.
        lens: the lens of the inner rows: ``"logit"`` or a lens object.
        sublayers: also read the residual stream after each block's attention and before
            its MLP (captured by hooks in the same forward pass), read out like the other
            rows: R = 2L + 1 rows ``emb, 1.attn, 1, 2.attn, 2, ..., L-1, L.attn, out``, where
            "i.attn" lies inside 1-based block i (between rows i-1 and i). The other rows'
            statistics equal those of the run without sublayers.
        progress: ``progress(fraction, message)``, True for a tqdm bar on stderr, or None.

    Returns:
        :class:`LensResult` with R = L + 1 rows (2L + 1 with ``sublayers``) and T positions;
        entropy and KL in nats.

    Raises:
        lenskit.InputError: a bad prompt (:class:`~lenskit.errors.PromptError`), target
            (:class:`~lenskit.errors.TargetError`), ``top_k`` or ``chunk_size``; with
            ``sublayers``, a model whose blocks run attention and the MLP in parallel (GPT-J,
            GPT-NeoX with ``use_parallel_residual``, Phi-1/2, Cohere, parallel Falcon), a
            family lenskit does not know, or a lens that reads block rows only (raised before
            the forward pass).
        lenskit.ReadoutError: the architecture's read-out cannot be found, or does not
            reproduce the model's own logits.
    """
    request = LensRequest(
        prompt, chat=chat, system=system, top_k=top_k, target=target, chunk_size=chunk_size,
        lens=lens, sublayers=sublayers,
    )  # fmt: skip
    return lens_result(model, tokenizer, request, progress=progress)


def _encode(model: Any, tokenizer: Any, prompt: Any, chat: bool, system: str | None) -> Any:
    return encode_prompt(
        tokenizer, prompt, chat=chat, system=system, max_length=context_length(model)
    )


def _result(
    engine: ReadoutEngine,
    tokenizer: Any,
    enc: EncodedPrompt,
    ids: list[int],
    stats: dict[str, np.ndarray],
    **extra: Any,
) -> LensResult:
    """A LensResult over ``ids`` (the prompt, perhaps with its continuation)."""
    tokens = token_strings(tokenizer, ids) if len(ids) != len(enc) else enc.tokens
    byte_level = byte_level_vocabulary(tokenizer)
    specials = special_token_ids(tokenizer)
    top_ids = stats["top_ids"]
    return LensResult(
        token_ids=np.asarray(ids, dtype=np.int64),
        tokens=np.asarray(tokens, dtype=object),
        display_tokens=[format_token(t, byte_level=byte_level) for t in tokens],
        layer_names=engine.row_names,
        entropy=stats["entropy"],
        kl_to_final=stats["kl_to_final"],
        top_ids=top_ids,
        top_tokens=vocab_strings(tokenizer, top_ids),
        top_probs=stats["top_probs"],
        is_special=[i in specials for i in ids],
        template_positions=enc.template_positions,
        vocab_size=engine.vocab_size,
        model_name=model_name(engine.model),
        prompt=enc.prompt,
        chat=enc.chat,
        system=enc.system,
        byte_level=byte_level,
        lens=engine.lens.name,
        **extra,
    )


def lens_result(
    model: Any, tokenizer: Any, request: LensRequest, *, progress: Progress | bool | None = None
) -> LensResult:
    """The :class:`LensResult` of a :class:`~lenskit.requests.LensRequest` (see
    :func:`run_lens`)."""
    engine = ReadoutEngine(model, request.lens, tokenizer, sublayers=request.sublayers)
    check_top_k_vocab(request.top_k, engine.vocab_size)
    enc = _encode(model, tokenizer, request.prompt, request.chat, request.system)
    targets: list[int] = []
    if request.target is not None:
        targets = [check_target_id(target_token_id(tokenizer, request.target), engine.vocab_size)]
    report, close = progress_reporter(progress, "Logit lens")
    try:
        report(0.0, f"Forward pass over {len(enc)} tokens")
        hidden, model_last = engine.forward(enc.input_ids)
        stats = engine.statistics(
            hidden, top_k=request.top_k, targets=targets, chunk_size=request.chunk_size,
            report=report,
        )  # fmt: skip
        engine.check_out_row(stats.pop("last_out_logits"), model_last[0])
    finally:
        if close is not None:
            close()
    target_fields: dict[str, Any] = {}
    if targets:
        target = request.target
        target_fields = {
            "target": target if isinstance(target, str) else str(target),
            "target_id": targets[0],
            "target_prob": stats["target_prob"][:, :, 0],
            "target_rank": stats["target_rank"][:, :, 0],
        }
    return _result(engine, tokenizer, enc, enc.input_ids, stats, **target_fields)


def lens_on_generation(
    model: Any,
    tokenizer: Any,
    prompt: str | Sequence[dict[str, str]],
    *,
    chat: bool = True,
    system: str | None = None,
    max_new_tokens: int = 5,
    top_k: int = 5,
    generated_ids: Sequence[int] | None = None,
    lens: str | Lens = "logit",
    progress: Progress | bool | None = None,
) -> GenerationLens:
    """The lens over the prompt followed by its greedy continuation.

    Generates like :func:`lenskit.intervention_sweep` (greedy, stops early only at EOS), then
    reads out the T + G tokens prompt + Gen0..Gen{G-1} like :func:`run_lens`. Gen j is
    PREDICTED at position ``T - 1 + j`` (the column to show for "Gen j", matching the
    sweep's columns) and sits at position ``T + j``.

    Args:
        model, tokenizer, prompt, chat, system: as for :func:`run_lens`.
        max_new_tokens: tokens to generate (:data:`lenskit.requests.MAX_NEW_TOKENS`).
        top_k: top tokens kept per cell.
        generated_ids: the continuation when it is known already (e.g.
            ``SweepResult.generated_ids`` of the same prompt), used instead of generating
            (``max_new_tokens`` is then ignored).
        lens: the lens of the inner rows.
        progress: as for :func:`run_lens`.

    Returns:
        :class:`~lenskit.results.GenerationLens` (unpacks as ``(result, n_prompt)``).

    Raises:
        lenskit.GenerationLengthError: ``max_new_tokens`` out of range or past the context.
        lenskit.InputError: bad ``top_k`` or ``generated_ids``.
    """
    from lenskit.requests import SweepRequest

    # The sweep's request holds the same rules for the prompt, max_new_tokens and top_k.
    request = SweepRequest(
        prompt, chat=chat, system=system, max_new_tokens=max_new_tokens, top_k=top_k, lens=lens
    )
    engine = ReadoutEngine(model, lens, tokenizer)
    check_top_k_vocab(top_k, engine.vocab_size)
    given = None if generated_ids is None else check_generated_ids(generated_ids, engine.vocab_size)
    n_new = request.max_new_tokens if given is None else len(given)
    enc = _encode(model, tokenizer, prompt, chat, system)
    what = None if given is None else f"{n_new} generated tokens"
    check_context(len(enc), n_new, context_length(model), reads_last=True, what=what)
    report, close = progress_reporter(progress, "Lens over the generation")
    try:
        if given is None:
            report(0.0, f"Generating {n_new} tokens")
            given = greedy_generate(
                model, enc.input_ids, n_new, eos_token_ids=eos_token_ids(model, tokenizer)
            )
        return generation_lens(engine, tokenizer, enc, given, top_k, report)
    finally:
        if close is not None:
            close()


def generation_lens(
    engine: ReadoutEngine,
    tokenizer: Any,
    enc: EncodedPrompt,
    generated: Sequence[int],
    top_k: int,
    report: Progress = silent,
) -> GenerationLens:
    """Read out prompt + ``generated`` (already checked against the context)."""
    all_ids = list(enc.input_ids) + ids_list(generated)
    report(0.0, f"Forward pass over {len(all_ids)} tokens")
    hidden, model_last = engine.forward(all_ids)
    stats = engine.statistics(hidden, top_k=top_k, report=report)
    engine.check_out_row(stats.pop("last_out_logits"), model_last[0])
    return GenerationLens(_result(engine, tokenizer, enc, all_ids, stats), len(enc))


def layer_pairwise_kl(
    model: Any,
    tokenizer: Any,
    prompt: str | Sequence[dict[str, str]],
    position: int,
    *,
    chat: bool = True,
    system: str | None = None,
    lens: str | Lens = "logit",
) -> PairwiseKL:
    """KL between the read-out distributions of every pair of rows at one position.

    Rows (R = L + 1) as in :func:`run_lens`: "emb", "1".."L-1", "out" (the model's own logits).

    Args:
        model, tokenizer, prompt, chat, system: as for :func:`run_lens`.
        position: index into the encoded prompt; negative counts from the end (-1 = last).
        lens: the lens of the inner rows.

    Returns:
        :class:`~lenskit.results.PairwiseKL` (unpacks as ``(layer_names [R], kl [R, R])``)
        with ``kl[i, j]`` = KL(p_row_i || p_row_j), float32 nats, diagonal 0.

    Raises:
        lenskit.PositionSelectionError: ``position`` outside ``-T..T-1``.
        lenskit.PromptError: empty prompt, or longer than the model's context.
    """
    request = PairwiseRequest(prompt, position=position, chat=chat, system=system, lens=lens)
    return pairwise_result(model, tokenizer, request)


def pairwise_result(model: Any, tokenizer: Any, request: PairwiseRequest) -> PairwiseKL:
    """The :class:`PairwiseKL` of a :class:`~lenskit.requests.PairwiseRequest`."""
    engine = ReadoutEngine(model, request.lens, tokenizer)
    enc = _encode(model, tokenizer, request.prompt, request.chat, request.system)
    pos = check_position(request.position, len(enc))
    hidden, _ = engine.forward(enc.input_ids)
    logits = engine.row_logits(hidden, [pos])[0]  # [R, V]
    with torch.inference_mode():
        kl = pairwise_kl(logits, logits)
        kl.fill_diagonal_(0.0)  # KL(p || p) = 0 exactly; the GEMM form leaves rounding there
    return PairwiseKL(
        layer_names=engine.row_names,
        kl=kl.cpu().numpy().astype(np.float32),
        position=pos,
        token=enc.tokens[pos],
        lens=engine.lens.name,
    )
