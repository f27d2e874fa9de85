"""The colour metrics of the lens heatmaps: one :class:`Metric` entry each in :data:`METRICS`.

A metric says everything the charts, the app and the CLI need: its name and titles, units,
colour scale (scheme, linear/log, fixed domain), how to read its ``[R, T]`` values from a
:class:`~lenskit.results.LensResult`, whether it needs a target token, its tooltip line and
whether it applies to the lens over generated tokens. The app's choices and the CLI's help
come from :func:`metric_names`, :func:`generation_metric_names` and :func:`metric_help`, so a
new metric is one entry in :data:`METRICS` (or one :func:`register_metric` call).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lenskit.charts.theme import PROB_FLOOR, PROB_FORMAT, format_bound
from lenskit.errors import InputError
from lenskit.results import LensResult
from lenskit.text.tokens import format_token

__all__ = [
    "METRICS",
    "Metric",
    "generation_metric_names",
    "get_metric",
    "metric_help",
    "metric_names",
    "metric_values",
    "register_metric",
]

#: Data columns the lens heatmaps use themselves; no metric may be named like one.
RESERVED_COLUMNS = frozenset(
    {"position", "layer", "token", "value", "colour", "top1", "label", "dark", "more"}
    | {"target_rank", "gen_label", "scale_note"}
)


@dataclass(frozen=True)
class Metric:
    """How one per-cell quantity is read, coloured and described.

    Attributes:
        key: the metric's name (its key in :data:`METRICS`, the CLI's ``--metric`` value).
        title: axis/legend title, e.g. "Entropy".
        units: "nats" or "probability".
        values: how to get the ``[R, T]`` values from a LensResult: the name of a result field
            or a callable ``result -> array``; None (or a None field) means "not available
            for this result".
        help: what the metric is, in a few words (CLI ``--help``, app help texts).
        scheme: Vega colour scheme name.
        reverse: reverse the scheme; every metric maps "confident / close to the final
            prediction" to blue and "uncertain / far" to red.
        scale_type: "linear" or "log".
        log_domain_max: the domain's upper end is ln V (entropy's maximum) rather than a constant.
        domain_min: lower end of the domain.
        domain_max: upper end of the domain when ``log_domain_max`` is False.
        needs_target: only defined when the run had a target token.
        generation: offered for the lens over generated tokens (which has no target).
        tooltip: title of the metric's own line in a cell's tooltip when another metric is
            coloured (``{target}`` is replaced by the target token); None: no line of its own
            (e.g. the top-1 probability, which the "top 1" line already gives).
        value_format: d3-format of its values in tooltips (default: 3 decimals for nats,
            :data:`~lenskit.charts.theme.PROB_FORMAT` for probabilities).
    """

    key: str
    title: str
    units: str
    values: str | Callable[[LensResult], Any]
    help: str = ""
    scheme: str = "redblue"
    reverse: bool = False
    scale_type: str = "linear"
    log_domain_max: bool = False
    domain_min: float = 0.0
    domain_max: float = 1.0
    needs_target: bool = False
    generation: bool = True
    tooltip: str | None = None
    value_format: str | None = None

    def domain(self, vocab_size: int) -> tuple[float, float]:
        """The fixed colour domain; values outside it are clamped to its ends."""
        hi = math.log(max(int(vocab_size), 2)) if self.log_domain_max else self.domain_max
        return (self.domain_min, hi)

    @property
    def label(self) -> str:
        """Legend title: the title with its units (or the scale when units are implied)."""
        if self.units == "probability":
            return f"{self.title} (log scale)" if self.scale_type == "log" else self.title
        return f"{self.title} ({self.units})"

    @property
    def format(self) -> str:
        """d3-format of the metric's values in tooltips."""
        if self.value_format:
            return self.value_format
        return PROB_FORMAT if self.units == "probability" else ".3f"

    def tooltip_title(self, result: LensResult) -> str | None:
        """The title of the metric's own tooltip line for ``result`` (None: no line)."""
        if self.tooltip is None:
            return None
        target = format_token(str(getattr(result, "target", None)), 16)
        return self.tooltip.format(target=target)

    def read(self, result: LensResult) -> np.ndarray | None:
        """The metric's ``[R, T]`` values of ``result``, or None where it has none."""
        if callable(self.values):
            values = self.values(result)
        else:
            values = getattr(result, self.values, None)
        return None if values is None else np.asarray(values)


#: Metric key -> how it is read and coloured, in the order the app offers them. Domains are
#: fixed (independent of the data) so that two prompts or two models can be compared by colour.
METRICS: dict[str, Metric] = {
    m.key: m
    for m in (
        # 0 .. ln V: blue = low (confident), red = high (uniform)
        Metric(
            "entropy",
            "Entropy",
            "nats",
            "entropy",
            help="entropy of each read-out distribution",
            reverse=True,
            log_domain_max=True,
            tooltip="entropy (nats)",
        ),
        # 0 .. ln V, clamped: blue = already the final distribution
        Metric(
            "kl_to_final",
            "KL(out \u2016 layer)",
            "nats",
            "kl_to_final",
            help="how far each row's distribution is from the final one, KL(out || layer)",
            reverse=True,
            log_domain_max=True,
            tooltip="KL(out || layer) (nats)",
        ),
        # 0 .. 1: blue = high
        Metric(
            "top1_prob",
            "Top-1 probability",
            "probability",
            lambda result: result.top_probs[:, :, 0],
            help="probability of each row's most likely token",
        ),
        # log scale 1e-5 .. 1: blue = the target is likely
        Metric(
            "target_prob",
            "Target probability",
            "probability",
            "target_prob",
            help="probability of the target token",
            scale_type="log",
            domain_min=PROB_FLOOR,
            needs_target=True,
            generation=False,
            tooltip="p({target})",
        ),
    )
}


def register_metric(metric: Metric, *, replace: bool = False) -> Metric:
    """Add ``metric`` to :data:`METRICS` (last in the choices); returns it.

    Raises InputError for a name that is taken (unless ``replace``) or that the charts use
    as a data column of their own.
    """
    if metric.key in RESERVED_COLUMNS:
        raise InputError(f"metric name {metric.key!r} is reserved by the charts; pick another")
    if metric.key in METRICS and not replace:
        raise InputError(f"metric {metric.key!r} is already registered")
    METRICS[metric.key] = metric
    return metric


def get_metric(metric: str | Metric) -> Metric:
    """The :class:`Metric` named ``metric`` (a Metric passes through); InputError if unknown."""
    if isinstance(metric, Metric):
        return metric
    try:
        return METRICS[metric]
    except (KeyError, TypeError):
        raise InputError(f"unknown metric {metric!r}; known: {', '.join(metric_names())}") from None


def metric_names() -> list[str]:
    """Every metric's name, in the order the app offers them (the CLI's ``--metric`` choices)."""
    return list(METRICS)


def generation_metric_names() -> list[str]:
    """The metrics that apply to the lens over generated tokens (no target there)."""
    return [key for key, m in METRICS.items() if m.generation]


def metric_help(*, default: str | None = "entropy", target_hint: str = "needs a target") -> str:
    """One line naming each metric and what it colours, for ``--help`` and app help texts:
    ``"entropy (default): entropy of each read-out distribution; ..."``; metrics that need a
    target say ``target_hint`` (e.g. "needs --target")."""
    parts = []
    for key, m in METRICS.items():
        notes = ["default"] if key == default else []
        if m.needs_target and target_hint:
            notes.append(target_hint)
        note = f" ({', '.join(notes)})" if notes else ""
        parts.append(f"{key}{note}: {m.help or m.label}")
    return "; ".join(parts)


def metric_values(result: LensResult, metric: str | Metric) -> np.ndarray:
    """The ``[R, T]`` array a metric colours (InputError when it is not available)."""
    spec = get_metric(metric)
    values = spec.read(result)
    if values is None:
        why = "needs a target token" if spec.needs_target else "is not available"
        raise InputError(f"metric {spec.key!r} {why}; this result has none")
    return values


#: How far past a domain end a value must lie to count as clipped, as a fraction of the
#: linear domain (or of the end itself on a log scale): less is invisible in colour, and the
#: round-off of a KL of 0 (-1e-9) is not "clipped".
CLIP_TOLERANCE = 1e-3


def clipped(spec: Metric, values: Any, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks ``(below, above)``: values whose colour is clamped to a domain end.
    NaN is neither (it is drawn as a gap)."""
    lo, hi = spec.domain(vocab_size)
    flat = np.asarray(values, dtype=np.float64)
    if spec.scale_type == "log":
        return flat < lo * (1 - CLIP_TOLERANCE), flat > hi * (1 + CLIP_TOLERANCE)
    slack = CLIP_TOLERANCE * (hi - lo)
    return flat < lo - slack, flat > hi + slack


def clip_notes(spec: Metric, values: Any, vocab_size: int) -> np.ndarray | None:
    """Per value, whether its colour is clipped: ``"< 1e-5 (below the colour scale)"``,
    ``"> 6.91 (above the colour scale)"`` or ``"in range"``; None when no value is clipped
    (the charts then add no tooltip line)."""
    below, above = clipped(spec, values, vocab_size)
    if not (below.any() or above.any()):
        return None
    lo, hi = spec.domain(vocab_size)
    notes = np.full(below.shape, "in range", dtype=object)
    notes[below] = f"< {format_bound(lo)} (below the colour scale)"
    notes[above] = f"> {format_bound(hi)} (above the colour scale)"
    return notes


def clip_suffix(spec: Metric, values: Any, vocab_size: int) -> str:
    """``", clipped at 1e-5"`` (and/or the upper end) for a legend title when values lie
    outside the colour domain, else ``""``."""
    below, above = clipped(spec, values, vocab_size)
    lo, hi = spec.domain(vocab_size)
    ends = [format_bound(end) for end, out in ((lo, below), (hi, above)) if out.any()]
    return f", clipped at {' and '.join(ends)}" if ends else ""
