"""Training a tuned lens: :func:`train_lens` fits one affine translator per inner row.

Loss (as tuned-lens): the sum over inner rows i of the mean over positions of
KL(p_out || p_i), p_i = softmax of row i read out through the lens (``h + W_i h + b_i``, the
final norm, the unembedding; docs/architecture.md), p_out = the model's own distribution at
the same position. Optimiser and schedule: :mod:`lenskit.lens.train_options`.

Data: by default chat transcripts the model writes itself: each prompt of a prompt set (the
bundled one, or a prompt file) in the chat template, then a reply sampled from the model
(temperature 1, seeded per prompt), so the template's tokens are in the training data. With
``text=True`` the data are plain text files cut into windows of ``seq_len`` tokens. The
held-out split takes whole prompts (or windows), fixed by the seed.

The output directory (``out``) holds:

* ``config.json`` + ``params.pt``: the lens (tuned-lens's format, :mod:`lenskit.lens.tuned`),
  written at every checkpoint and at the end, so it always loads;
* ``checkpoint.pt``: step, translators, optimiser state and losses; ``resume=True`` continues
  from it and gives the same lens as a run that was never stopped (every step's sample is a
  function of the seed and the step's number only);
* ``train.json``: the options and the data's identity (a resumed run must match them), and
  at the end the losses and the held-out KL per row before and after training;
* ``transcripts.pt``: the generated transcripts (made once, reused by the same options);
* ``heldout.pt``: the held-out sequences for a fidelity report: a list of dicts
  ``{"input_ids": int64 [T], "template_mask": bool [T], "user_mask": bool [T]}``
  (template = the tokens the chat template adds between the user's text and the reply, user =
  the user's text; both all False for text windows). Read it with
  ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lenskit.dataset.prompts import PromptSet, load_prompts, prompt_items
from lenskit.errors import InputError
from lenskit.lens.train_options import (
    CHECKPOINT_EVERY,
    CLIP_NORM,
    DEFAULT_OPTIMIZER,
    EVAL_POSITIONS,
    HELDOUT_PERCENT,
    LR_SCALE,
    OPTIMIZERS,
    REPLY_TOKENS,
    SEQ_LEN,
    TRAIN_POSITIONS,
    TRAIN_SEED,
    TRAIN_SEQUENCES,
    TRAIN_STEPS,
    check_lr_scale,
    check_optimizer,
)
from lenskit.lens.tuned import TunedLens, unembed_hash
from lenskit.model.architecture import context_length, find_readout, model_name
from lenskit.model.forward_pass import eos_token_ids, hidden_states_forward, model_device
from lenskit.model.generate import sample_batch
from lenskit.progress import Progress, progress_reporter, scaled
from lenskit.text.prompts import encode_prompt

__all__ = [
    "CHECKPOINT_FILE",
    "HELDOUT_FILE",
    "STATE_FILE",
    "TRANSCRIPTS_FILE",
    "TrainingLog",
    "chat_transcripts",
    "check_options",
    "heldout_kl",
    "split_heldout",
    "text_windows",
    "train_lens",
]

CHECKPOINT_FILE = "checkpoint.pt"
STATE_FILE = "train.json"
TRANSCRIPTS_FILE = "transcripts.pt"
HELDOUT_FILE = "heldout.pt"

Record = dict[str, torch.Tensor]

#: Prompts whose replies are sampled together (one left-padded batch with a KV cache).
_SAMPLE_BATCH = 16


@dataclass
class TrainingLog:
    """What a training run reports (``lens.training``; also in ``train.json``).

    Attributes:
        steps: optimiser steps done.
        losses: the loss of each step (nats, summed over rows).
        heldout_kl_before / heldout_kl_after: mean KL(out || row) per inner row on held-out
            positions, with the zero lens (= logit lens) and the trained lens (empty when
            there is no held-out split or ``eval_positions`` is 0).
        heldout: the held-out sequences (as saved in ``heldout.pt``).
    """

    steps: int
    losses: list[float] = field(default_factory=list)
    heldout_kl_before: list[float] = field(default_factory=list)
    heldout_kl_after: list[float] = field(default_factory=list)
    heldout: list[Record] = field(default_factory=list, repr=False)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def chat_transcripts(
    model: Any,
    tokenizer: Any,
    prompts: PromptSet,
    *,
    seed: int = 0,
    reply_tokens: int = 64,
    report: Progress | None = None,
) -> list[Record]:
    """Each prompt in the chat template plus a reply the model samples (seed, prompt index;
    :func:`~lenskit.model.generate.sample_batch`, 16 prompts at a time), as records
    ``{"input_ids", "template_mask", "user_mask"}``."""
    stop = eos_token_ids(model, tokenizer)
    ctx = context_length(model)
    encoded = [
        encode_prompt(tokenizer, item.prompt, chat=True, system=item.system) for item in prompts
    ]
    records = []
    for start in range(0, len(encoded), _SAMPLE_BATCH):
        batch = encoded[start : start + _SAMPLE_BATCH]
        limits = [reply_tokens if ctx is None else min(reply_tokens, ctx - len(e)) for e in batch]
        seeds = [seed * 1_000_003 + start + j for j in range(len(batch))]
        replies = sample_batch(
            model, [e.input_ids for e in batch], limits, seeds, eos_token_ids=stop
        )
        for enc, reply in zip(batch, replies, strict=True):
            n = len(enc) + len(reply)
            template = torch.zeros(n, dtype=torch.bool)
            template[list(enc.template_positions)] = True
            user = torch.zeros(n, dtype=torch.bool)
            if enc.user_span is not None:
                user[enc.user_span[0] : enc.user_span[1]] = True
            ids = torch.tensor(enc.input_ids + reply, dtype=torch.long)
            records.append({"input_ids": ids, "template_mask": template, "user_mask": user})
        done = start + len(batch)
        if report is not None:
            report(done / len(encoded), f"Sampling replies {done}/{len(encoded)}")
    return records


def text_windows(tokenizer: Any, paths: Sequence[str | Path], seq_len: int) -> list[Record]:
    """Plain text files, each tokenized and cut into windows of ``seq_len`` tokens (a last
    window shorter than 2 tokens is dropped); masks all False."""
    records = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read this text file as UTF-8 ({exc})") from None
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        for start in range(0, len(ids), seq_len):
            window = torch.tensor(ids[start : start + seq_len], dtype=torch.long)
            if len(window) >= 2:
                blank = torch.zeros(len(window), dtype=torch.bool)
                records.append({"input_ids": window, "template_mask": blank, "user_mask": blank})
    if not records:
        raise InputError(f"no text to train on in {', '.join(str(p) for p in paths)}")
    return records


def split_heldout(n: int, percent: int, seed: int) -> tuple[list[int], list[int]]:
    """``(train, heldout)`` indices of n sequences: a seeded permutation, ``percent`` % held
    out (at least one when percent > 0), ascending."""
    n_held = 0 if percent == 0 else max(1, round(n * percent / 100))
    if n - n_held < 1:
        raise InputError(
            f"{n} prompt(s) / text window(s) leave nothing to train on with {percent}% held "
            "out: give more data, or heldout_percent=0"
        )
    order = np.random.default_rng([seed, 7]).permutation(n)
    return sorted(order[n_held:].tolist()), sorted(order[:n_held].tolist())


def _data_identity(data: Any, text: bool, tokenizer: Any, model: Any) -> tuple[Any, dict]:
    """The loaded source (a PromptSet, or text paths) and what identifies it."""
    if text:
        paths = [data] if isinstance(data, (str, Path)) else list(data or [])
        if not paths:
            raise InputError("text=True needs data: one or more text files")
        digest = hashlib.sha256()
        for p in paths:
            if not Path(p).is_file():
                raise InputError(f"{p}: no such text file")
            digest.update(Path(p).read_bytes())
        return paths, {
            "kind": "text",
            "source": [str(p) for p in paths],
            "sha256": digest.hexdigest(),
        }
    ctx = context_length(model)
    limit = None if ctx is None else ctx - 1
    if data is None or isinstance(data, (str, Path)):
        prompts = load_prompts(data, tokenizer=tokenizer, max_length=limit)
    else:
        prompts = prompt_items(data, tokenizer=tokenizer, max_length=limit)
    return prompts, {"kind": "chat", "source": prompts.source, "sha256": prompts.sha256}


def _sequences(
    model: Any, tokenizer: Any, source: Any, meta: dict, out: Path | None, report: Progress
) -> list[Record]:
    """The transcripts / windows of ``source``, from ``out``'s cache when ``meta`` matches."""
    cache = None if out is None else out / TRANSCRIPTS_FILE
    if cache is not None and cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        if saved.get("meta") == meta:
            return saved["records"]
    if meta["kind"] == "text":
        records = text_windows(tokenizer, source, meta["seq_len"])
    else:
        records = chat_transcripts(
            model, tokenizer, source, seed=meta["seed"], reply_tokens=meta["reply_tokens"],
            report=report,
        )  # fmt: skip
    if cache is not None:
        _atomic_save({"meta": meta, "records": records}, cache)
    return records


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def _states(model: Any, records: Sequence[Record], picks: Sequence[np.ndarray]) -> torch.Tensor:
    """Hidden states ``[P, L + 1, d]`` at the picked positions of each record (no grad)."""
    device = model_device(model)
    rows = []
    with torch.no_grad():
        for record, pos in zip(records, picks, strict=True):
            if len(pos) == 0:
                continue
            hidden, _ = hidden_states_forward(model, record["input_ids"][None].to(device))
            index = torch.as_tensor(pos, dtype=torch.long)
            rows.append(torch.stack([h[0, index.to(h.device)] for h in hidden], dim=1))
    return torch.cat(rows).to(find_readout(model).unembed.weight.device)


class _KLToTarget(torch.autograd.Function):
    """Mean over positions of KL(p || softmax(z)) from logits ``z [P, V]`` (fp32), target
    probabilities ``p [P, V]`` and their ``sum p log p [P]``.

    KL = sum p log p - p.z + logsumexp(z), and its gradient is (softmax(z) - p) / P: one
    pass over ``z`` each way, where autograd's log_softmax/multiply/sum makes several.
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, p: torch.Tensor, plogp: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(z, dim=-1)
        ctx.save_for_backward(z, lse, p)
        return (plogp - torch.linalg.vecdot(p, z) + lse).mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        z, lse, p = ctx.saved_tensors
        dz = torch.exp(z - lse[:, None]).sub_(p).mul_(grad / z.shape[0])
        return dz, None, None


def _row_kls(
    model: Any, lens: TunedLens, states: torch.Tensor, *, backward: bool = False
) -> list[float]:
    """Mean KL(out || row) per inner row of ``states [P, L + 1, d]``; with ``backward`` each
    row's KL is back-propagated into the lens as it is computed (one row's graph at a time)."""
    readout = find_readout(model)
    with torch.no_grad():
        target = torch.log_softmax(readout.final_logits(states[:, -1]).float(), dim=-1)
        p_out = target.exp()
        plogp = torch.where(p_out > 0, p_out * target, 0.0).sum(-1)  # 0 log 0 = 0
    kls = []
    for row in range(states.shape[1] - 1):
        with torch.set_grad_enabled(backward):
            h = lens.translate(states[:, row : row + 1], [row])[:, 0]
            kl = _KLToTarget.apply(readout.logits(h).float(), p_out, plogp)
            if backward:
                kl.backward()
        kls.append(float(kl.detach()))
    return kls


def _pick(records: Sequence[Record], rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """``n`` positions drawn without replacement over all tokens of ``records``, per record."""
    lengths = np.array([len(r["input_ids"]) for r in records])
    flat = np.sort(rng.choice(lengths.sum(), size=min(n, int(lengths.sum())), replace=False))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    which = np.searchsorted(starts, flat, side="right") - 1
    return [flat[which == i] - starts[i] for i in range(len(records))]


def heldout_kl(
    model: Any, lens: TunedLens, records: Sequence[Record], *, positions: int = 512, seed: int = 0
) -> list[float]:
    """Mean KL(out || row) per inner row over ``positions`` held-out positions (seeded)."""
    if not records or positions == 0:
        return []
    picks = _pick(records, np.random.default_rng([seed, 11]), positions)
    return _row_kls(model, lens, _states(model, records, picks))


class _Frozen:
    """The model's parameters without gradients for the duration (flags restored after)."""

    def __init__(self, model: Any):
        self.params = list(model.parameters())
        self.flags = [p.requires_grad for p in self.params]

    def __enter__(self) -> None:
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc: Any) -> None:
        for p, flag in zip(self.params, self.flags, strict=True):
            p.requires_grad_(flag)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def check_options(**values: Any) -> dict[str, int]:
    """The integer options of :func:`train_lens` by name, each checked against its
    :class:`~lenskit.requests.IntOption` (InputError saying what is allowed)."""
    options = {
        TRAIN_STEPS: values["steps"], CHECKPOINT_EVERY: values["checkpoint_every"],
        TRAIN_SEED: values["seed"], TRAIN_SEQUENCES: values["sequences"],
        TRAIN_POSITIONS: values["positions"], HELDOUT_PERCENT: values["heldout_percent"],
        REPLY_TOKENS: values["reply_tokens"], SEQ_LEN: values["seq_len"],
        EVAL_POSITIONS: values["eval_positions"],
    }  # fmt: skip
    return {opt.name: opt.check(value) for opt, value in options.items()}


def _prepare_dir(out: Path, state: dict, resume: bool) -> bool:
    """Check ``out`` against this run; True when there is a checkpoint to resume from."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    saved_path = out / STATE_FILE
    if not saved_path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        saved_path.write_text(json.dumps(state, indent=2) + "\n")
        return False
    if not resume:
        raise InputError(
            f"{out} holds a training run already: resume it (resume=True, --resume), or train "
            f"into another directory (or delete {STATE_FILE} and {CHECKPOINT_FILE} there)"
        )
    saved = json.loads(saved_path.read_text())
    differ = [k for k in ("options", "data") if saved.get(k) != state[k]]
    if differ:
        raise InputError(
            f"{out}: the run there was started with other {' and '.join(differ)} "
            f"({', '.join(f'{k}={saved.get(k)}' for k in differ)}); resume it with the same "
            "ones, or train into another directory"
        )
    return (out / CHECKPOINT_FILE).is_file()


def _optimizer(lens: TunedLens, name: str, lr_scale: float) -> torch.optim.Optimizer:
    choice = OPTIMIZERS[name]
    return choice.make(lens.parameters(), lr_scale * choice.base_lr)


def _save_checkpoint(out: Path, lens: TunedLens, opt: Any, step: int, losses: list) -> None:
    lens.save(out)
    state = {
        "step": step,
        "translators": {k: v.detach().cpu() for k, v in lens.translators.state_dict().items()},
        "optimizer": opt.state_dict(),
        "losses": list(losses),
    }
    _atomic_save(state, out / CHECKPOINT_FILE)


def _train_steps(
    model: Any, lens: TunedLens, train: list[Record], o: dict, run: dict, report: Progress
) -> list[float]:
    """Steps ``run["start"] .. steps - 1`` (the optimiser and losses in ``run``)."""
    opt, losses, out = run["opt"], run["losses"], run["out"]
    base_lr = run["lr_scale"] * OPTIMIZERS[run["optimizer"]].base_lr
    steps = o["steps"]
    for step in range(run["start"], steps):
        rng = np.random.default_rng([o["seed"], step])
        chosen = rng.choice(len(train), size=min(o["sequences"], len(train)), replace=False)
        records = [train[i] for i in np.sort(chosen)]
        states = _states(model, records, _pick(records, rng, o["positions"]))
        for group in opt.param_groups:  # linear decay to 0 (as tuned-lens; no warm-up)
            group["lr"] = base_lr * (1 - step / steps)
        opt.zero_grad(set_to_none=False)
        loss = sum(_row_kls(model, lens, states, backward=True))
        torch.nn.utils.clip_grad_norm_(lens.parameters(), CLIP_NORM)
        opt.step()
        losses.append(loss)
        done = step + 1
        if out is not None and (done % o["checkpoint_every"] == 0 or done == steps):
            _save_checkpoint(out, lens, opt, done, losses)
        report(done / steps, f"Step {done}/{steps}: KL {loss:.4g} nats (sum over rows)")
    return losses


def train_lens(
    model: Any,
    tokenizer: Any,
    data: Any = None,
    *,
    text: bool = False,
    out: str | Path | None = None,
    resume: bool = False,
    steps: int = TRAIN_STEPS.default,
    checkpoint_every: int = CHECKPOINT_EVERY.default,
    seed: int = TRAIN_SEED.default,
    sequences: int = TRAIN_SEQUENCES.default,
    positions: int = TRAIN_POSITIONS.default,
    heldout_percent: int = HELDOUT_PERCENT.default,
    reply_tokens: int = REPLY_TOKENS.default,
    seq_len: int = SEQ_LEN.default,
    eval_positions: int = EVAL_POSITIONS.default,
    optimizer: str = DEFAULT_OPTIMIZER,
    lr_scale: float = LR_SCALE,
    progress: Progress | bool | None = None,
) -> TunedLens:
    """Train a tuned lens for ``model`` (the module docstring says how, and what ``out`` holds).

    Args:
        data: a prompt set (None / ``"bundled"``, a ``.jsonl``/``.csv``/``.txt`` prompt file,
            a :class:`~lenskit.dataset.PromptSet` or a list of prompts) whose chat transcripts
            the model writes; with ``text=True``, a text file or a list of them.
        out: the output directory (None: nothing is written, no checkpoints).
        resume: continue the run in ``out`` from its last checkpoint (the same options).
        optimizer: ``"sgd"`` (tuned-lens's) or ``"adam"``, see
            :data:`~lenskit.lens.train_options.OPTIMIZERS`.
        lr_scale: the learning rate in units of the optimiser's base rate, > 0.
        progress: ``progress(fraction, message)``, True for a tqdm bar, or None.
        The other options: :mod:`lenskit.lens.train_options`.

    Returns:
        The :class:`~lenskit.lens.tuned.TunedLens`; ``lens.training`` is its
        :class:`TrainingLog` (losses, held-out KL per row before and after, held-out set).

    Raises:
        InputError: an option out of range, bad data, or an ``out`` that holds another run.
    """
    o = check_options(
        steps=steps, checkpoint_every=checkpoint_every, seed=seed, sequences=sequences,
        positions=positions, heldout_percent=heldout_percent, reply_tokens=reply_tokens,
        seq_len=seq_len, eval_positions=eval_positions,
    )  # fmt: skip
    lr_scale = check_lr_scale(lr_scale)
    check_optimizer(optimizer)
    if resume and out is None:
        raise InputError("resume=True needs the output directory (out=) of the run to resume")
    report, close = progress_reporter(progress, "Training the tuned lens")
    try:
        o.update(optimizer=optimizer, lr_scale=lr_scale)
        return _train(model, tokenizer, data, text, out, resume, o, report)
    finally:
        if close is not None:
            close()


def _train(
    model: Any, tokenizer: Any, data: Any, text: bool, out: Any, resume: bool, o: dict,
    report: Progress,
) -> TunedLens:  # fmt: skip
    source, identity = _data_identity(data, text, tokenizer, model)
    out = None if out is None else Path(out)
    model_id = {"name": model_name(model), "unembed_hash": unembed_hash(model)}
    state = {"options": dict(o), "data": {**identity, "model": model_id}}
    has_checkpoint = out is not None and _prepare_dir(out, state, resume)
    meta = {**identity, **model_id, "seed": o["seed"]}
    meta.update({"seq_len": o["seq_len"]} if text else {"reply_tokens": o["reply_tokens"]})
    records = _sequences(model, tokenizer, source, meta, out, scaled(report, 0.0, 0.1))
    train_idx, held_idx = split_heldout(len(records), o["heldout_percent"], o["seed"])
    heldout = [records[i] for i in held_idx]
    if out is not None:
        _atomic_save(heldout, out / HELDOUT_FILE)
    lens = TunedLens.from_model(model)
    log = TrainingLog(steps=0, heldout=heldout)
    with _Frozen(model):
        log.heldout_kl_before = heldout_kl(
            model, lens, heldout, positions=o["eval_positions"], seed=o["seed"]
        )
        opt = _optimizer(lens, o["optimizer"], o["lr_scale"])
        run = {"opt": opt, "losses": [], "out": out, "start": 0}
        run.update(optimizer=o["optimizer"], lr_scale=o["lr_scale"])
        if has_checkpoint:
            saved = torch.load(out / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
            lens.translators.load_state_dict(saved["translators"])
            opt.load_state_dict(saved["optimizer"])
            run.update(start=int(saved["step"]), losses=list(saved["losses"]))
        train = [records[i] for i in train_idx]
        log.losses = _train_steps(model, lens, train, o, run, scaled(report, 0.1, 1.0))
        log.steps = o["steps"]
        log.heldout_kl_after = heldout_kl(
            model, lens, heldout, positions=o["eval_positions"], seed=o["seed"]
        )
    lens.training = log
    if out is not None:
        summary = {k: getattr(log, k) for k in ("steps", "losses")}
        summary.update(
            heldout_kl_before=log.heldout_kl_before, heldout_kl_after=log.heldout_kl_after
        )
        (out / STATE_FILE).write_text(json.dumps({**state, "result": summary}, indent=2) + "\n")
    return lens
