"""Which blocks, at which prompt positions, does the generated answer depend on?

Definitions (docs/architecture.md):

* L = number of decoder blocks; an intervention layer index ``l`` in ``0..L-1`` means decoder
  block ``l`` (``decoder_layers(model)[l]``, 0-based). Intervening at block ``l`` changes the
  lens rows ``l + 1`` .. ``out``.
* Clean run: the prompt, then ``G <= max_new_tokens`` greedily generated tokens Gen0..Gen{G-1}.
  Gen j is predicted at position ``n_prompt - 1 + j``.
* Sweep cell ``(l, j)``: KL(p_clean || p_intervened) in nats of the next-token distribution at
  generated position j, where the intervened run is the clean sequence (prompt + Gen0..Gen{G-2},
  teacher-forced) with the intervention applied at block ``l`` at the chosen PROMPT positions
  only. Generated tokens are never intervened on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lenskit.errors import InterventionError
from lenskit.interventions.hooks import _InterventionHook
from lenskit.interventions.registry import Intervention, get_intervention
from lenskit.interventions.replay import (
    _auto_batch_size,
    _CleanRun,
    _prepare_clean,
    _replay,
)
from lenskit.model.architecture import context_length, decoder_layers, find_readout, model_name
from lenskit.model.forward_pass import eos_token_ids, model_device, model_logits
from lenskit.model.generate import greedy_generate
from lenskit.ops import kl_div
from lenskit.progress import Progress, check_progress, progress_reporter
from lenskit.requests import SweepRequest, check_context, resolve_layers, resolve_positions
from lenskit.results import SweepResult
from lenskit.text.prompts import EncodedPrompt, encode_prompt
from lenskit.text.tokens import byte_level_vocabulary, format_token, token_strings

__all__ = ["intervention_sweep", "sweep_result", "sweep_token_ids"]


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
    intervention: Intervention,
    seed: int,
    batch_size: int | None,
    strategy: str,
    clean: _CleanRun,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield ``(chunk_layers, logits [n, G, V])``, one forward pass per chunk of layers."""
    device = ids.device
    seq_len = ids.shape[1]
    pos_t = torch.tensor(positions, dtype=torch.long, device=device)
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
                hook = _InterventionHook(
                    intervention, pos_t, rows, layer=layer, seed=seed, n_prompt=n_prompt,
                    offset=split, clean_output=clean.outputs[layer] if split or strategy == "prefix" else None,
                )  # fmt: skip
                handles.append(blocks[layer].register_forward_hook(hook, with_kwargs=True))
            if strategy == "prefix":
                hidden = _replay(blocks, clean, chunk[0], chunk)
                logits = readout(hidden[:, -n_gen:])
            else:
                logits = model_logits(model, ids.expand(len(chunk), seq_len), n_gen)
        finally:
            for h in handles:
                h.remove()
        yield chunk, logits


def sweep_token_ids(
    model: nn.Module,
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
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Token-level sweep (the model-facing core): numpy arrays for :class:`SweepResult`.

    ``progress(fraction, message)`` hears of each batch of swept blocks (fraction: blocks done
    / blocks to sweep). The options are checked as in :class:`~lenskit.requests.SweepRequest`.
    """
    n_prompt, n_gen = len(prompt_ids), len(generated_ids)
    if n_prompt < 1 or n_gen < 1:
        raise InterventionError("need at least one prompt token and one generated token")
    SweepRequest("-", layers=layers, positions=positions, intervention=intervention,
                 seed=seed, batch_size=batch_size, strategy=strategy)  # fmt: skip
    spec = get_intervention(intervention)
    blocks = decoder_layers(model)
    chosen_layers = resolve_layers(layers, len(blocks))
    chosen_pos = resolve_positions(positions, n_prompt, template_positions)
    spec.check(chosen_pos, n_prompt)

    device = model_device(model)
    seq = [int(t) for t in prompt_ids] + [int(t) for t in generated_ids[:-1]]
    ids = torch.tensor([seq], dtype=torch.long, device=device)
    gen_t = torch.tensor([int(t) for t in generated_ids], dtype=torch.long, device=device)
    n_l = len(chosen_layers)
    out = {
        "kl": np.zeros((n_l, n_gen), dtype=np.float32),
        "top_ids_intervened": np.zeros((n_l, n_gen), dtype=np.int64),
        "generated_prob_intervened": np.zeros((n_l, n_gen), dtype=np.float32),
    }
    report = progress or (lambda fraction, message: None)
    if not chosen_pos:  # nothing to intervene on: every row is the clean run
        with torch.no_grad():
            clean_logits = model_logits(model, ids, n_gen)[0]
        out["top_ids_intervened"][:] = clean_logits.argmax(-1).cpu().numpy()
        probs = torch.softmax(clean_logits.float(), -1)[torch.arange(n_gen), gen_t]
        out["generated_prob_intervened"][:] = probs.cpu().numpy()
        report(1.0, f"Swept {n_l}/{n_l} blocks")
        used = "none"
    else:
        readout = _model_readout(model)
        used, clean = _prepare_clean(model, blocks, readout, ids, n_gen, chosen_pos, strategy)
        clean_logits = clean.logits
        chunks = _intervened_logits(
            model, blocks, readout, ids, n_prompt, n_gen, chosen_layers, chosen_pos,
            spec, int(seed), batch_size, used, clean,
        )  # fmt: skip
        _collect(chunks, clean_logits, gen_t, chosen_layers, out, report)
    clean_prob = torch.softmax(clean_logits.float(), -1)[torch.arange(n_gen), gen_t]
    return {
        **out,
        "layers": np.asarray(chosen_layers, dtype=np.int64),
        "positions": np.asarray(chosen_pos, dtype=np.int64),
        "generated_prob_clean": clean_prob.cpu().numpy().astype(np.float32),
        "num_blocks": len(blocks),
        "strategy": used,
    }


def _model_readout(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The model's own read-out of its last block's output, or None where lenskit cannot
    find it (the full-forward strategies still work then)."""
    from lenskit.errors import ReadoutError

    try:
        return find_readout(model).logits
    except ReadoutError:
        return None


def _collect(
    chunks: Iterator[tuple[list[int], torch.Tensor]],
    clean_logits: torch.Tensor,
    gen_t: torch.Tensor,
    layers: list[int],
    out: dict[str, np.ndarray],
    report: Progress,
) -> None:
    """Fill ``out``'s rows from each chunk of intervened logits ``[n, G, V]``."""
    row_of = {layer: i for i, layer in enumerate(layers)}
    n_gen, done = gen_t.shape[0], 0
    for chunk, logits in chunks:
        rows = [row_of[layer] for layer in chunk]
        p = clean_logits.unsqueeze(0).expand(len(rows), -1, -1).contiguous()
        out["kl"][rows] = kl_div(p, logits.contiguous()).cpu().numpy()
        out["top_ids_intervened"][rows] = logits.argmax(-1).cpu().numpy()
        q_prob = torch.softmax(logits.float(), -1)[:, torch.arange(n_gen), gen_t]
        out["generated_prob_intervened"][rows] = q_prob.cpu().numpy()
        done += len(chunk)
        report(done / len(layers), f"Swept {done}/{len(layers)} blocks")


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
    intervention: str = "skip",
    seed: int = 0,
    batch_size: int | None = None,
    progress: Progress | bool | None = None,
    strategy: Literal["auto", "prefix", "batched", "sequential"] = "auto",
) -> SweepResult:
    """Which blocks, at which prompt positions, does the generated answer depend on?

    1. Clean run: the prompt (wrapped in the chat template when ``chat``) is encoded and
       ``max_new_tokens`` tokens are generated greedily (argmax, KV cache; identical to
       ``model.generate(do_sample=False)``). Generation stops early only at an EOS token of
       the model's generation config, which is then the last generated token.
    2. For every swept block ``l`` the clean sequence (prompt + Gen0..Gen{G-2},
       teacher-forced) is run again with the intervention applied to block ``l``'s output at
       the chosen PROMPT positions, and ``kl[l, j]`` = KL(p_clean || p_intervened) in nats of
       the next-token distribution at generated position j.

    Interventions (:data:`lenskit.INTERVENTIONS`; docs/architecture.md has their formulas):
    ``"skip"`` removes block l's update at the positions, ``"mean"`` replaces block l's output
    there by its mean over the other prompt positions (position 0 excluded), ``"noise"`` adds
    seeded Gaussian noise of ``NOISE_SCALE`` x the residual's norm.

    Positions: ``"template"`` (the chat-template tokens; an error when there are none),
    ``"all-prompt"``, or explicit prompt indices ``0 <= t < T`` (an explicit empty list gives
    KL = 0 everywhere).

    Strategies (all agree to float rounding): ``"auto"`` (``"prefix"`` where the model's
    blocks feed each other directly and the read-out reproduces its logits, else
    ``"batched"``), ``"prefix"`` (each batch row starts at its own block and at the first
    intervened position, earlier keys/values from the clean KV cache: about L(L+1)/2 block
    evaluations over T - t0 positions instead of L^2 over T), ``"batched"`` (full forward
    passes, one row per block) and ``"sequential"`` (one pass per block: the reference).

    Args:
        model: a causal LM in eval mode (``lenskit.load_model``).
        tokenizer: its tokenizer.
        prompt: the user's text.
        chat: wrap the prompt in the tokenizer's chat template.
        system: optional system message (chat only).
        max_new_tokens: :data:`lenskit.requests.MAX_NEW_TOKENS` tokens to generate.
        layers: block indices to sweep, each in ``0..L-1`` (None = all).
        positions: ``"template"``, ``"all-prompt"`` or a list of prompt indices.
        intervention: a name of :data:`lenskit.INTERVENTIONS`.
        seed: :data:`lenskit.requests.SEED`, for ``"noise"``.
        batch_size: swept blocks per forward pass (None = as many as fit a memory budget).
        progress: ``progress(fraction, message)``, True for a tqdm bar, or None.
        strategy: ``"auto"``, ``"prefix"``, ``"batched"`` or ``"sequential"``.

    Returns:
        :class:`SweepResult` with ``kl`` ``[nL, G]`` in nats.

    Raises:
        lenskit.InputError: a bad option (the subclasses GenerationLengthError,
            LayerSelectionError, PositionSelectionError, UnknownInterventionError,
            PromptError say which).
    """
    request = SweepRequest(
        prompt, chat=chat, system=system, max_new_tokens=max_new_tokens,
        layers=layers, positions=positions, intervention=intervention, seed=seed, batch_size=batch_size, strategy=strategy,
    )  # fmt: skip
    return sweep_result(model, tokenizer, request, progress=progress)[0]


def sweep_result(
    model: nn.Module,
    tokenizer: Any,
    request: SweepRequest,
    *,
    progress: Progress | bool | None = None,
) -> tuple[SweepResult, EncodedPrompt]:
    """The sweep of a :class:`~lenskit.requests.SweepRequest` and the encoded prompt (see
    :func:`intervention_sweep`). Every check runs before the (slow) generation."""
    check_progress(progress)
    blocks = decoder_layers(model)
    resolve_layers(request.layers, len(blocks))
    ctx = context_length(model)
    enc = encode_prompt(
        tokenizer, request.prompt, chat=request.chat, system=request.system, max_length=ctx
    )
    n_new = request.max_new_tokens
    check_context(len(enc), n_new, ctx, reads_last=False)
    spec = get_intervention(request.intervention)
    spec.check(resolve_positions(request.positions, len(enc), enc.template_positions), len(enc))
    # The bar starts after the checks: an error is then printed on a line of its own.
    report, close = progress_reporter(progress, "Sweep")
    try:
        report(0.0, f"Generating {n_new} tokens")
        generated = greedy_generate(
            model, enc.input_ids, n_new, eos_token_ids=eos_token_ids(model, tokenizer)
        )
        report(0.0, "Clean run")
        core = sweep_token_ids(
            model, enc.input_ids, generated, layers=request.layers,
            positions=request.positions, template_positions=enc.template_positions,
            intervention=request.intervention, seed=request.seed,
            batch_size=request.batch_size, strategy=request.strategy, progress=report,
        )  # fmt: skip
    finally:
        if close is not None:
            close()
    core.pop("strategy")
    return _sweep_result(model, tokenizer, enc, request, generated, core), enc


def _sweep_result(
    model: nn.Module,
    tokenizer: Any,
    enc: EncodedPrompt,
    request: SweepRequest,
    generated: list[int],
    core: dict[str, Any],
) -> SweepResult:
    gen_tokens = token_strings(tokenizer, generated)
    byte_level = byte_level_vocabulary(tokenizer)
    top = core["top_ids_intervened"]
    top_tokens = np.asarray(token_strings(tokenizer, top.ravel().tolist()), dtype=object)
    return SweepResult(
        generated_ids=np.asarray(generated, dtype=np.int64),
        generated_tokens=gen_tokens,
        generated_display_tokens=[format_token(t, byte_level=byte_level) for t in gen_tokens],
        top_tokens_intervened=top_tokens.reshape(top.shape),
        prompt_token_ids=enc.input_ids,
        prompt_tokens=token_strings(tokenizer, enc.input_ids),
        intervention=request.intervention,
        seed=request.seed,
        max_new_tokens=request.max_new_tokens,
        model_name=model_name(model),
        prompt=enc.prompt,
        chat=request.chat,
        system=request.system,
        byte_level=byte_level,
        **core,
    )
