"""``run_dataset``: the lens at the aligned columns of many prompts, summed as statistics.

Definitions (docs/architecture.md, "Dataset mode"): per prompt, the chat template is applied,
the greedy reply generated (up to ``max_new_tokens``, stopping at the end of the turn), and the
lens read out at the aligned columns only (:mod:`lenskit.dataset.align`); each cell is scored
against the answer / next / later / control tokens (:mod:`lenskit.dataset.targets`).
Records stream to the run's directory batch by batch (memory does not grow with the number of
prompts); a killed run resumes there; under torchrun each rank takes its own prompts and the
statistics are summed over ranks.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lenskit.dataset.align import align
from lenskit.dataset.batch import BatchPlan, run_batch
from lenskit.dataset.distributed import Ranks, ranks_from_environment
from lenskit.dataset.prompts import PromptItem, PromptSet, prompt_items
from lenskit.dataset.result import FORMAT, DatasetResult
from lenskit.dataset.stats import SufficientStats, SweepStats
from lenskit.dataset.store import RunDirectory
from lenskit.dataset.targets import derangement, spelled_answer
from lenskit.errors import InputError, LenskitError
from lenskit.lens.lenses import Lens
from lenskit.lens.readout import ReadoutEngine
from lenskit.model.architecture import context_length, model_name
from lenskit.model.forward_pass import eos_token_ids, model_logits, padded_batch
from lenskit.progress import Progress, progress_reporter
from lenskit.requests import DatasetRequest, check_context, check_top_k_vocab
from lenskit.text.prompts import encode_prompt, special_token_ids
from lenskit.text.tokens import byte_level_vocabulary

__all__ = ["run_dataset", "dataset_result"]


def run_dataset(
    model: Any,
    tokenizer: Any,
    prompts: PromptSet | Sequence[str | PromptItem | dict[str, Any]],
    *,
    user_tokens: int = 3,
    max_new_tokens: int = 24,
    top_k: int = 10,
    sweep: bool = False,
    batch_size: int = 16,
    seed: int = 0,
    lens: str | Lens = "logit",
    output_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: Progress | bool | None = None,
) -> DatasetResult:
    """Read the lens at the aligned columns of every prompt and sum the statistics.

    Args:
        model: a chat causal LM (:func:`lenskit.load_model`).
        tokenizer: its tokenizer (with a chat template).
        prompts: a :class:`~lenskit.dataset.PromptSet` (:func:`lenskit.load_prompts`), or a
            list of strings, :class:`~lenskit.dataset.PromptItem` or dicts.
        user_tokens: the user's last tokens read, columns -k..-1.
        max_new_tokens: the greedy reply's length (default 24; stops at end of turn).
        top_k: top tokens kept per cell.
        sweep: also the causal check: skip at the template positions, every block.
        batch_size: prompts per generation and forward pass (results do not depend on it).
        seed: the control tokens' derangement.
        lens: the lens of the inner rows.
        output_dir: the run's directory (records, state, summary); None: a temporary one
            that lives as long as the result. A directory with the same run resumes it.
        overwrite: replace a run of other options or prompts in ``output_dir``.
        progress: ``progress(fraction, message)``, True for a tqdm bar, or None.

    Returns:
        :class:`~lenskit.dataset.DatasetResult`.

    Raises:
        lenskit.InputError: bad options or prompts, a prompt past the context, a directory
            holding another run (all before any model work).
    """
    request = DatasetRequest(
        user_tokens=user_tokens, max_new_tokens=max_new_tokens, top_k=top_k, sweep=sweep,
        batch_size=batch_size, seed=seed, lens=lens,
    )  # fmt: skip
    items = prompts if isinstance(prompts, PromptSet) else prompt_items(prompts)
    return dataset_result(
        model, tokenizer, items, request, output_dir=output_dir, overwrite=overwrite,
        progress=progress,
    )  # fmt: skip


def dataset_result(
    model: Any,
    tokenizer: Any,
    prompts: PromptSet,
    request: DatasetRequest,
    *,
    output_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: Progress | bool | None = None,
    ranks: Ranks | None = None,
) -> DatasetResult:
    """The run of ``request`` over ``prompts`` (see :func:`run_dataset`)."""
    ranks = ranks or ranks_from_environment()
    plan = _plan(model, tokenizer, prompts, request)
    temporary = None
    if output_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="lenskit-dataset-")
        output_dir = temporary.name
    directory = RunDirectory(output_dir)
    state = {
        "format": FORMAT,
        "prompts": {"source": prompts.source, "sha256": prompts.sha256, "n": len(prompts)},
        "options": request.options(),
        "model": model_name(model),
        "vocab_size": plan.engine.vocab_size,
    }
    _prepare(directory, state, overwrite, ranks)
    batches = _my_batches(len(prompts), request.batch_size, directory.done_prompts(), ranks)
    n_todo, n_done = sum(len(b) for b in batches), 0
    report, close = progress_reporter(progress, "Dataset")
    try:
        for batch in batches:
            directory.write_part(batch[0], run_batch(plan, batch))
            n_done += len(batch)
            report(n_done / n_todo, f"{n_done}/{n_todo} prompts")
    finally:
        if close is not None:
            close()
    ranks.barrier()
    _summarise(directory, plan, prompts, state, ranks)
    return DatasetResult.load(directory.path, temporary=temporary)


def _my_batches(n: int, size: int, done: set[int], ranks: Ranks) -> list[list[int]]:
    """This rank's batches of the prompts not done yet. Batches are cut from the whole set
    (prompts ``b * size .. (b + 1) * size - 1``) and dealt to the ranks in turn, so a prompt
    is batched with the same partners whatever the number of processes: padding, and so the
    float rounding, does not depend on it."""
    batches = []
    for b, start in enumerate(range(0, n, size)):
        if ranks.owns(b):
            todo = [i for i in range(start, min(n, start + size)) if i not in done]
            if todo:
                batches.append(todo)
    return batches


def _prepare(directory: RunDirectory, state: dict[str, Any], overwrite: bool, ranks: Ranks) -> None:
    """Rank 0 starts or resumes the directory; every rank stops on its error."""
    error = None
    if ranks.rank == 0:
        try:
            directory.prepare(state, overwrite)
        except LenskitError as exc:
            error = str(exc)
    error = ranks.broadcast_error(error)
    if error is not None:
        raise InputError(error)
    if ranks.rank != 0:
        directory.check(state)


def _encode_all(model: Any, tokenizer: Any, prompts: PromptSet, max_new: int) -> list[Any]:
    ctx = context_length(model)
    encoded = []
    for item in prompts:
        where = f"prompt {item.index}" + (f" (line {item.line})" if item.line else "")
        try:
            enc = encode_prompt(tokenizer, item.prompt, system=item.system, max_length=ctx)
            check_context(len(enc), max_new, ctx, reads_last=False)
        except InputError as exc:
            raise type(exc)(f"{where}: {exc}") from None
        encoded.append(enc)
    return encoded


def _plan(model: Any, tokenizer: Any, prompts: PromptSet, request: DatasetRequest) -> BatchPlan:
    """Everything checked and prepared before any batch (InputError before model work)."""
    if len(prompts) < 2:
        raise InputError(
            f"the dataset mode needs at least 2 prompts (a prompt's control token comes from "
            f"another prompt), got {len(prompts)}"
        )
    engine = ReadoutEngine(model, request.lens, tokenizer)
    check_top_k_vocab(request.top_k, engine.vocab_size)
    encoded = _encode_all(model, tokenizer, prompts, request.max_new_tokens)
    alignment = align(encoded, request.user_tokens)
    stop = eos_token_ids(model, tokenizer)
    specials = special_token_ids(tokenizer)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = int(pad) if pad is not None else min(stop | specials, default=0)
    partner = _partner_tokens(engine, tokenizer, prompts, encoded, request.batch_size, pad)
    byte_level = byte_level_vocabulary(tokenizer)
    return BatchPlan(
        engine=engine, tokenizer=tokenizer, items=list(prompts), encoded=encoded,
        alignment=alignment, request=request, perm=derangement(len(prompts), request.seed),
        partner_token=partner.__getitem__, stop_ids=stop, specials=specials, pad_id=pad,
        column_tokens=alignment.labels(byte_level),
    )  # fmt: skip


def _partner_tokens(
    engine: ReadoutEngine,
    tokenizer: Any,
    prompts: PromptSet,
    encoded: Sequence[Any],
    batch_size: int,
    pad: int,
) -> list[int | None]:
    """Each prompt's token as another prompt's control: its gold answer with a leading
    space, else its next token (the argmax after the prompt, computed in batches)."""
    tokens: list[int | None] = [
        None if item.answer is None else spelled_answer(tokenizer, item.answer) for item in prompts
    ]
    missing = [i for i, t in enumerate(tokens) if t is None]
    for start in range(0, len(missing), batch_size):
        batch = missing[start : start + batch_size]
        ids, mask, positions = padded_batch(
            [encoded[i].input_ids for i in batch], pad, engine.readout.unembed.weight.device
        )
        with torch.inference_mode():
            logits = model_logits(engine.model, ids, 1, attention_mask=mask, position_ids=positions)
        for i, token in zip(batch, logits[:, -1].argmax(-1).tolist(), strict=True):
            tokens[i] = int(token)
    return tokens


def _summarise(
    directory: RunDirectory,
    plan: BatchPlan,
    prompts: PromptSet,
    state: dict[str, Any],
    ranks: Ranks,
) -> None:
    """Sum the committed parts (each rank a share of them), all-reduce, rank 0 writes."""
    groups = ["all", *sorted(prompts.categories)]
    stats = SufficientStats.empty(groups, plan.engine.row_names, plan.alignment.columns)
    sweep = None
    if plan.request.sweep:
        sweep = SweepStats.empty(groups, plan.engine.n_layers, plan.request.max_new_tokens)
    n_prompts = 0
    for i, part in enumerate(directory.part_ids()):
        if ranks.owns(i):
            stats.add_records(directory.read("records", part))
            n_prompts += len(directory.read("prompts", part))
            if sweep is not None:
                sweep.add_records(directory.read("sweep", part))
    stats = stats.with_flat(ranks.sum(stats.flat()))
    if sweep is not None:
        sweep = sweep.with_flat(ranks.sum(sweep.flat()))
    n_prompts = int(ranks.sum(np.asarray([float(n_prompts)]))[0])
    if ranks.rank == 0:
        result = DatasetResult(stats, sweep, plan.column_tokens, state, n_prompts)
        directory.write_summary(result.to_dict())
    ranks.barrier()
