"""One batch of a dataset run: generate, find the targets, read out the aligned columns.

The prompts of a batch are generated together (left padding, one KV cache) and read out
together (one forward pass); the read-out covers only the aligned columns, through the one
read-out engine. Each prompt gives R x C record rows (rows x aligned columns) and one prompts
row; with the causal check, a sweep of every block at the template positions too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lenskit.dataset.align import Alignment
from lenskit.dataset.prompts import PromptItem
from lenskit.dataset.targets import (
    PromptTargets,
    answer_token,
    control_token,
    later_tokens,
    spelled_answer,
)
from lenskit.interventions.sweep import sweep_token_ids
from lenskit.lens.readout import ReadoutEngine
from lenskit.model.generate import greedy_generate_batch
from lenskit.requests import DatasetRequest
from lenskit.text.prompts import EncodedPrompt
from lenskit.text.tokens import format_token

__all__ = ["BatchPlan", "run_batch"]


@dataclass
class BatchPlan:
    """What every batch of a run shares."""

    engine: ReadoutEngine
    tokenizer: Any
    items: Sequence[PromptItem]
    encoded: Sequence[EncodedPrompt]
    alignment: Alignment
    request: DatasetRequest
    perm: np.ndarray  # the control's derangement of the whole set
    partner_token: Callable[[int], int | None]  # a prompt's token as another's control
    stop_ids: set[int]
    specials: set[int]
    pad_id: int
    column_tokens: list[str]  # the token shown for each column (for the records)


def _targets(plan: BatchPlan, index: int, reply: list[int]) -> PromptTargets:
    item, enc = plan.items[index], plan.encoded[index]
    # The control must be unrelated to anything this prompt says: not its answer (either
    # spelling), and no token of its reply.
    own = {int(t) for t in reply}
    if item.answer is not None:
        answer_id, correct, where = answer_token(plan.tokenizer, reply, item.answer)
        own |= {answer_id, spelled_answer(plan.tokenizer, item.answer)}
    else:
        answer_id, correct, where = None, None, None
    control = control_token(index, plan.perm, plan.partner_token, own, enc.input_ids)
    return PromptTargets(
        answer_id=answer_id,
        correct=correct,
        answer_index=where,
        next_id=int(reply[0]),
        later_ids=later_tokens(reply, enc.input_ids, plan.specials),
        control_id=control,
    )


def run_batch(plan: BatchPlan, indices: Sequence[int]) -> dict[str, pd.DataFrame]:
    """The records, prompts (and sweep) frames of the prompts ``indices``."""
    request = plan.request
    prompts = [plan.encoded[i].input_ids for i in indices]
    replies = greedy_generate_batch(
        plan.engine.model, prompts, request.max_new_tokens,
        eos_token_ids=plan.stop_ids, pad_token_id=plan.pad_id,
    )  # fmt: skip
    targets = [_targets(plan, i, reply) for i, reply in zip(indices, replies, strict=True)]
    hidden, last, offsets = plan.engine.forward_batch(prompts, plan.pad_id)
    records = []
    for b, index in enumerate(indices):
        records.append(_records(plan, index, targets[b], hidden, b, offsets[b], last[b]))
    frames = {
        "records": pd.concat(records, ignore_index=True),
        "prompts": _prompts_frame(plan, indices, replies, targets),
    }
    if request.sweep:
        frames["sweep"] = pd.concat(
            [_sweep(plan, i, r, t) for i, r, t in zip(indices, replies, targets, strict=True)],
            ignore_index=True,
        )
    return frames


def _records(
    plan: BatchPlan,
    index: int,
    targets: PromptTargets,
    hidden: Sequence[Any],
    batch: int,
    offset: int,
    model_last: Any,
) -> pd.DataFrame:
    """R x C record rows of one prompt (columns its text is too short for are left out)."""
    enc, engine = plan.encoded[index], plan.engine
    where = plan.alignment.positions(enc)
    present = [j for j, p in enumerate(where) if p is not None]
    slots: dict[str, int | None] = {}
    ids: list[Any] = []
    for name in ("answer", "next", "control"):
        token = getattr(targets, f"{name}_id")
        slots[name] = None if token is None else len(ids)
        ids += [] if token is None else [token]
    n_named = len(ids)
    if targets.later_ids:  # their best rank is the rank of their largest logit: one group
        ids.append(tuple(targets.later_ids))
    stats = engine.statistics(
        hidden, top_k=plan.request.top_k, targets=ids, batch=batch,
        positions=[offset + where[j] for j in present],
    )  # fmt: skip
    engine.check_out_row(stats.pop("last_out_logits"), model_last)
    ranks = stats.get("target_rank", np.zeros((engine.n_rows, len(present), 0)))
    probs = stats.get("target_prob", np.zeros((engine.n_rows, len(present), 0)))
    r, c = np.meshgrid(np.arange(engine.n_rows), np.arange(len(present)), indexing="ij")
    r, c = r.ravel(), c.ravel()
    data: dict[str, Any] = {
        "prompt_index": index,
        "category": plan.items[index].category,
        "layer": np.asarray(engine.row_names, dtype=object)[r],
        "row": r,
        "column": np.asarray(plan.alignment.columns)[present][c],
        "token": np.asarray(plan.column_tokens, dtype=object)[present][c],
        "entropy": stats["entropy"][r, c],
        "kl_to_final": stats["kl_to_final"][r, c],
        "top_ids": list(stats["top_ids"][r, c]),
        "top1_id": stats["top_ids"][r, c, 0],
        "top1_prob": stats["top_probs"][r, c, 0],
    }
    for name, slot_index in slots.items():
        data[f"{name}_id"] = pd.array([getattr(targets, f"{name}_id")] * len(r), dtype="Int64")
        if slot_index is None:
            data[f"{name}_rank"] = np.full(len(r), np.nan)
            data[f"{name}_prob"] = np.full(len(r), np.nan)
        else:
            data[f"{name}_rank"] = ranks[r, c, slot_index].astype(float)
            data[f"{name}_prob"] = probs[r, c, slot_index].astype(float)
    later = ranks[:, :, n_named:]
    data["later_rank"] = later.min(axis=-1)[r, c].astype(float) if later.shape[-1] else np.nan
    data["correct"] = pd.array([targets.correct] * len(r), dtype="boolean")
    return pd.DataFrame(data)


def _prompts_frame(
    plan: BatchPlan,
    indices: Sequence[int],
    replies: Sequence[list[int]],
    targets: Sequence[PromptTargets],
) -> pd.DataFrame:
    rows = []
    for index, reply, t in zip(indices, replies, targets, strict=True):
        item = plan.items[index]
        rows.append(
            {
                "prompt_index": index,
                "category": item.category,
                "prompt": item.prompt,
                "system": item.system,
                "answer": item.answer,
                "reply": plan.tokenizer.decode(reply, skip_special_tokens=True),
                "reply_ids": [int(x) for x in reply],
                "answer_id": t.answer_id,
                "answer_index": t.answer_index,
                "answer_token": None if t.answer_id is None else _shown(plan, t.answer_id),
                "correct": t.correct,
                "next_id": t.next_id,
                "next_token": _shown(plan, t.next_id),
                "control_id": t.control_id,
                "control_token": None if t.control_id is None else _shown(plan, t.control_id),
                "later_ids": list(t.later_ids),
            }
        )
    frame = pd.DataFrame(rows)
    for name in ("answer_id", "answer_index", "control_id"):
        frame[name] = frame[name].astype("Int64")
    frame["correct"] = frame["correct"].astype("boolean")
    return frame


def _shown(plan: BatchPlan, token_id: int) -> str:
    raw = plan.tokenizer.convert_ids_to_tokens([int(token_id)])[0]
    return format_token(str(raw), 0)


def _sweep(plan: BatchPlan, index: int, reply: list[int], t: PromptTargets) -> pd.DataFrame:
    """Skip at the template positions, every block: KL per (block, generated token), and
    whether the answer token stops being the top-1 at its position (teacher-forced)."""
    enc = plan.encoded[index]
    core = sweep_token_ids(
        plan.engine.model, enc.input_ids, reply, positions="template",
        template_positions=enc.template_positions, intervention="skip",
    )  # fmt: skip
    kl, top = core["kl"], core["top_ids_intervened"]
    n_blocks, n_gen = kl.shape
    b, j = np.meshgrid(np.arange(n_blocks), np.arange(n_gen), indexing="ij")
    if t.correct and t.answer_index is not None:
        flipped = pd.array(top[:, t.answer_index] != reply[t.answer_index], dtype="boolean")
    else:
        flipped = pd.array([None] * n_blocks, dtype="boolean")
    return pd.DataFrame(
        {
            "prompt_index": index,
            "category": plan.items[index].category,
            "block": b.ravel(),
            "gen_index": j.ravel(),
            "kl": kl.ravel().astype(float),
            "top_id_intervened": top.ravel(),
            "flipped": flipped[b.ravel()],
        }
    )
