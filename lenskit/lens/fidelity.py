"""How faithfully a lens reads each row: KL to the model's output and top-1 agreement.

:func:`lens_fidelity` reads held-out transcripts through one or more lenses with the one
read-out engine (:class:`~lenskit.lens.readout.ReadoutEngine`: exactly what the views show)
and reports, per row and per region of the transcript (the chat template's tokens, the
user's text):

* ``mean_kl``: the mean over positions of KL(p_out || p_row) in nats (the views'
  ``kl_to_final``; 0 on row "out");
* ``top1_agreement``: the share of positions where the row's top-1 token is the out row's.

Means pool the positions of all transcripts (a long transcript weighs more than a short one);
``n`` is the number of positions of the region. Rows: "emb", "1" .. "L-1", "out" (the
reference); see docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lenskit.errors import InputError
from lenskit.lens.lenses import Lens
from lenskit.lens.readout import ReadoutEngine
from lenskit.model.architecture import context_length, model_name
from lenskit.progress import Progress, progress_reporter
from lenskit.results import ResultRecord
from lenskit.text.prompts import encode_prompt

__all__ = ["FIDELITY_REGIONS", "FidelityReport", "compare_fidelity", "lens_fidelity"]

#: The regions of a transcript a report keeps apart, in the order of its arrays' axis 1.
FIDELITY_REGIONS = ("template", "user")

#: Units of the float fields of :class:`FidelityReport`.
FIDELITY_UNITS = {"mean_kl": "nats", "top1_agreement": "share of positions"}


@dataclass
class FidelityReport(ResultRecord):
    """Per row, lens and region: mean KL(out || row) and top-1 agreement with row "out".

    Shapes: n lenses, 2 regions (:data:`FIDELITY_REGIONS`: template, user), R = L + 1 rows.

    Attributes:
        layer_names: ``[R]`` "emb", "1" .. "L-1", "out" (the reference row).
        lenses: ``[n]`` lens names, unique.
        mean_kl: ``[n, 2, R]`` float64 mean KL(p_out || p_row), nats (NaN where n is 0).
        top1_agreement: ``[n, 2, R]`` float64 share of positions whose top-1 token equals the
            out row's (NaN where n is 0).
        n: ``[2]`` int64 positions per region, over all transcripts.
        n_transcripts: the number of transcripts read.
        model_name: what the model was loaded from.
    """

    layer_names: np.ndarray
    lenses: np.ndarray
    mean_kl: np.ndarray
    top1_agreement: np.ndarray
    n: np.ndarray
    n_transcripts: int = 0
    model_name: str = ""
    units: dict[str, str] = field(default_factory=lambda: dict(FIDELITY_UNITS))

    def __post_init__(self) -> None:
        self.layer_names = self._str_array("layer_names", 1)
        self.lenses = self._str_array("lenses", 1)
        self.mean_kl = self._array("mean_kl", np.float64, 3)
        self.top1_agreement = self._array("top1_agreement", np.float64, 3)
        self.n = self._array("n", np.int64, 1)
        self.n_transcripts = int(self.n_transcripts)
        shape = (len(self.lenses), len(FIDELITY_REGIONS), len(self.layer_names))
        self._check_shapes(
            {"mean_kl": shape, "top1_agreement": shape, "n": (len(FIDELITY_REGIONS),)},
            f"lenses={shape[0]}, regions={shape[1]}, R={shape[2]}",
        )
        if len(set(self.lenses.tolist())) != len(self.lenses):
            raise InputError(f"FidelityReport.lenses must be unique, got {self.lenses.tolist()}")
        if (self.n < 0).any() or self.n_transcripts < 0:
            raise InputError("FidelityReport.n and n_transcripts must be >= 0")

    def to_frame(self) -> pd.DataFrame:
        """Long table: one row per (lens, region, row) with ``row``, ``row_index``, ``lens``,
        ``region``, ``mean_kl``, ``top1_agreement`` and ``n``; rows in read-out order."""
        n_lens, n_reg, r = self.mean_kl.shape
        lens, reg, row = np.meshgrid(
            np.arange(n_lens), np.arange(n_reg), np.arange(r), indexing="ij"
        )
        lens, reg, row = lens.ravel(), reg.ravel(), row.ravel()
        return pd.DataFrame(
            {
                "row": self.layer_names[row],
                "row_index": row,
                "lens": self.lenses[lens],
                "region": np.asarray(FIDELITY_REGIONS, dtype=object)[reg],
                "mean_kl": self.mean_kl.ravel(),
                "top1_agreement": self.top1_agreement.ravel(),
                "n": self.n[reg],
            }
        )


def compare_fidelity(reports: Sequence[FidelityReport]) -> FidelityReport:
    """Several reports of the same model and transcripts side by side (one report whose lenses
    are theirs, in order; a repeated lens name gets " (2)", " (3)" ...).

    Raises:
        InputError: no reports, or reports of other rows or other transcripts.
    """
    reports = list(reports)
    if not reports or not all(isinstance(r, FidelityReport) for r in reports):
        raise InputError("compare_fidelity needs one or more FidelityReport objects")
    first = reports[0]
    for other in reports[1:]:
        same = (
            other.layer_names.tolist() == first.layer_names.tolist()
            and other.n.tolist() == first.n.tolist()
            and other.n_transcripts == first.n_transcripts
        )
        if not same:
            raise InputError(
                "compare_fidelity: the reports were read on other rows or other transcripts "
                f"(rows {len(first.layer_names)} vs {len(other.layer_names)}, positions per "
                f"region {first.n.tolist()} vs {other.n.tolist()}); compare reports of one "
                "model on the same data."
            )
    return FidelityReport(
        layer_names=first.layer_names,
        lenses=_unique_names([name for r in reports for name in r.lenses.tolist()]),
        mean_kl=np.concatenate([r.mean_kl for r in reports]),
        top1_agreement=np.concatenate([r.top1_agreement for r in reports]),
        n=first.n,
        n_transcripts=first.n_transcripts,
        model_name=first.model_name,
    )


def _mask(value: Any, n: int, what: str, i: int) -> np.ndarray:
    mask = np.asarray(value).astype(bool).reshape(-1)
    if mask.size != n:
        raise InputError(
            f"transcript {i}: {what} has {mask.size} entries for {n} input_ids; give one "
            "True/False per token."
        )
    return mask


def _transcripts(
    model: Any, tokenizer: Any, data: Any, system: str | None
) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
    """``(input_ids, template_mask, user_mask)`` per transcript of ``data``."""
    if isinstance(data, (str, Mapping)) or not isinstance(data, Sequence) or not len(data):
        raise InputError(
            "data must be a non-empty list of transcripts ({'input_ids', 'template_mask', "
            "'user_mask'}) or of prompts (text or chat messages)."
        )
    out = []
    for i, item in enumerate(data):
        if isinstance(item, Mapping):
            missing = {"input_ids", "template_mask", "user_mask"} - set(item)
            if missing:
                raise InputError(f"transcript {i} has no {', '.join(sorted(missing))}")
            ids = [int(t) for t in np.asarray(item["input_ids"]).reshape(-1)]
            if not ids:
                raise InputError(f"transcript {i} has no input_ids")
            template = _mask(item["template_mask"], len(ids), "template_mask", i)
            user = _mask(item["user_mask"], len(ids), "user_mask", i)
        else:
            enc = encode_prompt(
                tokenizer, item, chat=True, system=system, max_length=context_length(model)
            )
            ids = list(enc.input_ids)
            template = np.zeros(len(ids), dtype=bool)
            template[enc.template_positions] = True
            user = np.zeros(len(ids), dtype=bool)
            if enc.user_span is not None:
                user[enc.user_span[0] : enc.user_span[1]] = True
        out.append((ids, template, user))
    return out


def lens_fidelity(
    model: Any,
    tokenizer: Any,
    lens: str | Lens | Sequence[str | Lens],
    data: Sequence[Any],
    *,
    system: str | None = None,
    chunk_size: int | None = None,
    progress: Progress | bool | None = None,
) -> FidelityReport:
    """Per row, the mean KL(out || row) and top-1 agreement with row "out" of one or more
    lenses on held-out transcripts, for the template's tokens and the user's text apart.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        lens: a lens (name or object) or a list of them, reported side by side (one forward
            pass per transcript for all).
        data: a list of transcripts ``{"input_ids": [...], "template_mask": [...],
            "user_mask": [...]}`` (one True/False per token, e.g. the held-out transcripts the
            tuned-lens trainer saves), or of prompts (text or chat messages), each wrapped in
            the chat template: template mask = its template positions, user mask = the
            user's text (:attr:`~lenskit.text.prompts.EncodedPrompt.user_span`). No reply is
            appended: the model is causal, so what follows a position never changes its
            read-out. Positions in neither mask are not counted.
        system: the system prompt of prompts given as text (None: the template's default).
        chunk_size: as for :func:`lenskit.run_lens`.
        progress: ``progress(fraction, message)``, True for a tqdm bar, or None.

    Returns:
        A :class:`FidelityReport`; ``to_frame()`` gives the long table.

    Raises:
        lenskit.InputError: bad data, a prompt that does not encode, a lens that does not fit.
        lenskit.ReadoutError: the architecture's read-out cannot be found or reproduced.
    """
    specs = [lens] if isinstance(lens, (str, Lens)) or lens is None else list(lens)
    if not specs:
        raise InputError("lens_fidelity needs at least one lens")
    engines = [ReadoutEngine(model, spec, tokenizer) for spec in specs]
    names = _unique_names([e.lens.name for e in engines])
    transcripts = _transcripts(model, tokenizer, data, system)
    r = engines[0].n_rows
    kl_sum = np.zeros((len(engines), len(FIDELITY_REGIONS), r))
    agree = np.zeros_like(kl_sum)
    counts = np.zeros(len(FIDELITY_REGIONS), dtype=np.int64)
    report, close = progress_reporter(progress, "Lens fidelity")
    try:
        for i, (ids, template, user) in enumerate(transcripts):
            report(i / len(transcripts), f"Transcript {i + 1}/{len(transcripts)}")
            masks = np.stack([template, user])  # [2, T] in FIDELITY_REGIONS order
            pos = np.flatnonzero(masks.any(axis=0))
            if not pos.size:
                continue
            counts += masks[:, pos].sum(axis=1)
            hidden, model_last = engines[0].forward(ids)
            for j, engine in enumerate(engines):
                kl, hit = _read(engine, hidden, model_last, pos, len(ids), chunk_size)
                weights = masks[:, pos].astype(np.float64)  # [2, P]
                kl_sum[j] += weights @ kl.T
                agree[j] += weights @ hit.T
        report(1.0, f"{len(transcripts)} transcripts read")
    finally:
        if close is not None:
            close()
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = np.where(counts > 0, counts, np.nan)[None, :, None]
        return FidelityReport(
            layer_names=engines[0].row_names,
            lenses=names,
            mean_kl=kl_sum / denom,
            top1_agreement=agree / denom,
            n=counts,
            n_transcripts=len(transcripts),
            model_name=model_name(model),
        )


def _read(
    engine: ReadoutEngine,
    hidden: Any,
    model_last: Any,
    pos: np.ndarray,
    n_tokens: int,
    chunk_size: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """KL(out || row) ``[R, P]`` (float64) and top-1 agreement with row "out" ``[R, P]``
    (0/1) at positions ``pos``, read out like the views (row "out" checked against the model
    when the last token is among them)."""
    stats = engine.statistics(hidden, top_k=1, positions=pos.tolist(), chunk_size=chunk_size)
    last = stats.pop("last_out_logits")
    if int(pos[-1]) == n_tokens - 1:
        engine.check_out_row(last, model_last[0])
    top1 = stats["top_ids"][:, :, 0]
    hit = (top1 == top1[-1:]).astype(np.float64)
    return stats["kl_to_final"].astype(np.float64), hit


def _unique_names(names: Sequence[str]) -> list[str]:
    """``names`` made unique in order: a repeated name gets " (2)", " (3)" ..."""
    out: list[str] = []
    for name in names:
        unique, k = str(name), 2
        while unique in out:
            unique, k = f"{name} ({k})", k + 1
        out.append(unique)
    return out
