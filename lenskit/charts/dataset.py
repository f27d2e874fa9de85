"""Charts of a dataset run (:class:`~lenskit.dataset.DatasetResult`): the lens at the aligned
columns summed over prompts, and the causal check.

* :func:`dataset_heatmap`: one statistic, read-out rows (y) x aligned columns (x).
* :func:`dataset_category_heatmaps`: the same, one small heatmap per category.
* :func:`dataset_sweep_heatmap`: mean KL when a block is skipped, blocks x generated tokens.
* :func:`dataset_flip_chart`: the share of answered prompts whose answer flips, per block.
* :func:`read_vs_cause_chart`: per block, where the answer can be read beside what skipping
  the block changes.

Same conventions as the lens view: ``emb`` at the bottom and ``out`` on top (block 0 at the
bottom), the columns labelled by the run's ``column_labels`` (the user's last tokens
``user -3 .. user -1``, then the template tokens in purple), fixed colour domains (rates
0..1, lift -1..1 diverging, probabilities on a log scale from 1e-5, ranks on a log scale from
1 = top, entropy and KL 0..ln V when V is given, else up to the data's maximum). Every cell's
tooltip gives the value, its 95% interval and the interval's kind (Wilson for rates, normal
for means and the lift) and n, the prompts counted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from lenskit.charts.marks import cell_text, chart_title, colour_legend, configure
from lenskit.charts.sweep import SWEEP_KL_MAX, SWEEP_SCHEME
from lenskit.charts.theme import (
    PROB_FLOOR,
    PROB_FORMAT,
    RANK_CONVENTION,
    TEMPLATE_COLOR,
    count_noun,
    lens_title,
    row_axis_values,
    text_dark_mask,
)
from lenskit.dataset import HIT_KS, MEAN_STATS, RATE_STATS, DatasetResult, interval_kind
from lenskit.dataset.stats import SweepStats
from lenskit.errors import InputError

__all__ = [
    "STAT_TITLES",
    "dataset_category_heatmaps",
    "dataset_flip_chart",
    "dataset_heatmap",
    "dataset_sweep_heatmap",
    "read_vs_cause_chart",
    "stat_scale",
]

#: What each statistic is called on axes, legends and tooltips.
STAT_TITLES: dict[str, str] = {
    "entropy": "Mean entropy (nats)",
    "kl_to_final": "Mean KL(out \u2016 layer) (nats)",
    "answer_prob": "Mean p(answer)",
    "next_prob": "Mean p(next token)",
    "control_prob": "Mean p(control token)",
    "answer_rank": f"Mean rank of the answer ({RANK_CONVENTION})",
    "next_rank": f"Mean rank of the next token ({RANK_CONVENTION})",
    "later_rank": f"Mean best rank of a later reply token ({RANK_CONVENTION})",
    "control_rank": f"Mean rank of the control token ({RANK_CONVENTION})",
    "answer_hit": "Answer hit rate",
    "next_hit": "Next-token hit rate",
    "later_hit": "Later-token hit rate",
    "control_hit": "Control hit rate",
    "lift": "Lift (answer hit - control hit)",
}
#: How tooltips name the interval (its kind is a line of its own).
_INTERVAL = "95% interval"


@dataclass(frozen=True)
class StatScale:
    """How one statistic is coloured and printed.

    Attributes:
        title: legend and tooltip title.
        scale_type: "linear" or "log".
        domain: the fixed colour domain (values outside are clamped).
        scheme, reverse: the Vega scheme; blue always means "read" / "confident".
        shift: added to the values shown (ranks: 0-based data, 1-based display).
        fmt: d3-format of the tooltip values.
    """

    title: str
    scale_type: str
    domain: tuple[float, float]
    scheme: str = "redblue"
    reverse: bool = False
    shift: float = 0.0
    fmt: str = ".3f"

    def norm(self, values: np.ndarray) -> np.ndarray:
        """Where each value falls on the colour ramp, 0..1 (NaN stays NaN)."""
        lo, hi = self.domain
        v = np.clip(values, lo, hi)
        if self.scale_type == "log":
            return (np.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return (v - lo) / (hi - lo)


def _data_max(values: np.ndarray, floor: float) -> float:
    finite = values[np.isfinite(values)]
    return max(float(finite.max()) if finite.size else floor, floor)


def stat_scale(stat: str, k: int = 1, values: Any = (), vocab_size: int | None = None) -> StatScale:
    """The colour scale of ``stat`` (``values``: the data, for the domains that follow it
    when V is not known)."""
    data = np.asarray(values, dtype=np.float64).ravel()
    title = STAT_TITLES.get(stat, stat)
    if stat == "lift":
        return StatScale(f"{title}, top-{k}", "linear", (-1.0, 1.0), "blueorange", True)
    if stat in RATE_STATS:
        return StatScale(f"{title} (top-{k})", "linear", (0.0, 1.0))
    if stat.endswith("_prob"):
        return StatScale(f"{title} (log scale)", "log", (PROB_FLOOR, 1.0), fmt=PROB_FORMAT)
    if stat.endswith("_rank"):
        hi = float(vocab_size) if vocab_size else _data_max(data + 1.0, 2.0)
        return StatScale(
            f"{title}, log scale", "log", (1.0, hi), reverse=True, shift=1.0, fmt=".1f"
        )
    if stat in MEAN_STATS:
        hi = math.log(max(int(vocab_size), 2)) if vocab_size else _data_max(data, 1e-3)
        return StatScale(title, "linear", (0.0, hi), reverse=True)
    raise InputError(f"unknown statistic {stat!r}; choose one of {MEAN_STATS + RATE_STATS}")


# --- the heatmaps ----------------------------------------------------------------------------


def _cell_text(values: np.ndarray, scale: StatScale) -> list[str]:
    if scale.fmt == PROB_FORMAT:
        return ["" if not math.isfinite(v) else f"{v:.0e}" for v in values]
    digits = 1 if scale.shift else 2
    return ["" if not math.isfinite(v) else f"{v:.{digits}f}" for v in values]


def _stat_frame(
    result: DatasetResult, stat: str, k: int, category: str | None, scale: StatScale
) -> pd.DataFrame:
    """The long table of ``summary_frame`` ready to draw: display values (ranks 1-based),
    the column label, the interval's kind, the cell text and whether it is white."""
    frame = result.summary_frame(stat, k, category).rename(columns={"label": "column_label"})
    for name in ("value", "low", "high"):
        frame[name] = frame[name].astype(np.float64) + scale.shift
    lo, hi = scale.domain
    value = frame["value"].to_numpy()
    frame["colour"] = np.clip(value, lo, hi) if scale.scale_type == "log" else value
    frame["interval"] = interval_kind(stat)
    frame["n"] = frame["n"].astype(np.int64)
    frame["label"] = _cell_text(value, scale)
    frame["dark"] = text_dark_mask(np.nan_to_num(scale.norm(value), nan=0.5))
    frame["category"] = category or "all prompts"
    return frame


def _column_x(result: DatasetResult, cell_width: int) -> alt.X:
    """Aligned columns on x, labelled by the run's column labels (template tokens purple)."""
    table = {str(c): label for c, label in zip(result.columns, result.column_labels, strict=True)}
    template = [c for c in result.columns if c >= 0]
    test = f"indexof({json.dumps(template)}, datum.value) >= 0"
    axis = alt.Axis(
        labelExpr=f"{json.dumps(table)}[''+datum.value]",
        labelAngle=0 if cell_width >= 60 else -50,
        labelAlign="center" if cell_width >= 60 else "right",
        labelColor=alt.condition(test, alt.value(TEMPLATE_COLOR), alt.value("#222")),
        labelFontWeight=alt.condition(test, alt.value("bold"), alt.value("normal")),
        labelLimit=90,
        labelOverlap=False,
        ticks=False,
    )
    return alt.X(
        "column:O",
        sort=list(result.columns),
        scale=alt.Scale(domain=list(result.columns)),
        title="column: the user's last tokens, then the template tokens (purple)",
        axis=axis,
    )


def _rows_y(result: DatasetResult, cell_height: int) -> alt.Y:
    """Read-out rows on y, ``out`` on top and ``emb`` at the bottom."""
    order = list(result.rows)[::-1]
    axis: dict[str, Any] = {"labelFontSize": 10, "ticks": False}
    if cell_height < 10 and len(order) > 12:
        axis["values"] = row_axis_values(len(order), 5 if len(order) <= 60 else 10)
    return alt.Y(
        "layer:N", sort=order, scale=alt.Scale(domain=order), title="layer (read-out)",
        axis=alt.Axis(**axis),
    )  # fmt: skip


def _stat_tooltip(scale: StatScale) -> list[alt.Tooltip]:
    return [
        alt.Tooltip("layer:N", title="layer (read-out)"),
        alt.Tooltip("column_label:N", title="column"),
        alt.Tooltip("value:Q", title=scale.title, format=scale.fmt),
        alt.Tooltip("low:Q", title=f"{_INTERVAL}, low", format=scale.fmt),
        alt.Tooltip("high:Q", title=f"{_INTERVAL}, high", format=scale.fmt),
        alt.Tooltip("interval:N", title="interval"),
        alt.Tooltip("n:Q", title="prompts counted (n)"),
    ]


def _stat_colour(scale: StatScale, height: int) -> alt.Color:
    lo, hi = scale.domain
    return alt.Color(
        "colour:Q",
        scale=alt.Scale(
            type=scale.scale_type, domain=[lo, hi], scheme=scale.scheme, reverse=scale.reverse,
            clamp=True,
        ),
        title=scale.title,
        legend=colour_legend(height, **({"format": ".0e"} if scale.fmt == PROB_FORMAT else {})),
    )  # fmt: skip


def _cell_size(result: DatasetResult, small: bool) -> tuple[int, int]:
    n_cols, n_rows = len(result.columns), len(result.rows)
    width = max(22, min(40 if small else 62, (520 if small else 880) // max(n_cols, 1)))
    height = max(6, min(14 if small else 22, (300 if small else 620) // max(n_rows, 1)))
    return width, height


def _heatmap(
    result: DatasetResult, frame: pd.DataFrame, scale: StatScale, small: bool, title: Any
) -> alt.LayerChart:
    """The heatmap's layers (not configured: small multiples are concatenated first)."""
    cell_width, cell_height = _cell_size(result, small)
    x, y = _column_x(result, cell_width), _rows_y(result, cell_height)
    height = cell_height * len(result.rows)
    tooltip = _stat_tooltip(scale)
    base = alt.Chart(frame)
    layers: list[Any] = [
        base.mark_rect(stroke="white", strokeWidth=0.5).encode(
            x=x, y=y, color=_stat_colour(scale, height), tooltip=tooltip
        )
    ]
    if cell_width >= 30 and cell_height >= 12:
        layers.append(cell_text(base, x, y, tooltip, fontSize=10, limit=cell_width - 2))
    chart = alt.layer(*layers).properties(
        width=cell_width * len(result.columns), height=height, title=title
    )
    return chart if small else chart.properties(autosize=alt.AutoSizeParams(type="pad"))


def _subtitle(result: DatasetResult, *parts: str) -> str:
    """``"model · 300 prompts · parts..."``."""
    model = result.state.get("model") or "model"
    return " \u00b7 ".join([model, count_noun(result.n_prompts, "prompt"), *parts])


def _rows_note(result: DatasetResult) -> str:
    return f"{len(result.rows)} read-outs (emb \u2192 out)"


def _lens_name(result: DatasetResult) -> str:
    return lens_title(result.state.get("options", {}).get("lens"))


def dataset_heatmap(
    result: DatasetResult,
    stat: str,
    k: int = 1,
    category: str | None = None,
    *,
    vocab_size: int | None = None,
) -> alt.LayerChart:
    """One statistic of a dataset run: read-out rows (y) x aligned columns (x).

    Args:
        result: the run.
        stat: one of :meth:`DatasetResult.statistics` (``"answer_hit"``, ``"lift"``, ...).
        k: the hit rates' k (rank < k), one of :data:`~lenskit.dataset.HIT_KS`.
        category: one category's prompts (None: all).
        vocab_size: V, for the entropy / KL domain 0..ln V and the ranks' 1..V.
    """
    values = result.summary(stat, k, category).to_numpy()
    scale = stat_scale(stat, k, values, vocab_size)
    frame = _stat_frame(result, stat, k, category, scale)
    title = chart_title(
        f"{_lens_name(result)} over a prompt set: {scale.title}",
        _subtitle(
            result, f"category {category}" if category else "all prompts", _rows_note(result)
        ),
    )
    return configure(_heatmap(result, frame, scale, False, title))


def dataset_category_heatmaps(
    result: DatasetResult,
    stat: str,
    k: int = 1,
    *,
    vocab_size: int | None = None,
    columns: int = 3,
) -> alt.ConcatChart:
    """Small multiples: :func:`dataset_heatmap` of ``stat`` once per category, ``columns``
    per line, one shared colour scale and legend."""
    if not result.categories:
        raise InputError("this run's prompts have no categories: there is one heatmap, of all")
    values = np.concatenate([result.summary(stat, k, c).to_numpy() for c in result.categories])
    scale = stat_scale(stat, k, values, vocab_size)
    panels = []
    for category in result.categories:
        frame = _stat_frame(result, stat, k, category, scale)
        n = int(frame["n"].max()) if len(frame) else 0
        counted = f"n = {n}" if n else "no prompt counted"
        title = alt.TitleParams(f"{category} ({counted})", anchor="start", fontSize=12)
        panels.append(_heatmap(result, frame, scale, True, title))
    chart = alt.concat(*panels, columns=max(int(columns), 1)).resolve_scale(color="shared")
    chart = chart.properties(
        autosize=alt.AutoSizeParams(type="pad"),
        title=chart_title(
            f"{_lens_name(result)} over a prompt set by category: {scale.title}",
            _subtitle(result, count_noun(len(result.categories), "category"), _rows_note(result)),
        ),
    )
    return configure(chart)


# --- the causal check ------------------------------------------------------------------------


def _sweep(result: DatasetResult, chart: str) -> SweepStats:
    if result.sweep is None:
        raise InputError(
            f"{chart} needs a run with the causal check: run it with sweep=True (--sweep)"
        )
    return result.sweep


def _block_y(n_blocks: int, title: str = "skipped block", axis: bool = True) -> alt.Y:
    order = list(range(n_blocks))[::-1]  # block 0 at the bottom
    return alt.Y(
        "block:O", sort=order, scale=alt.Scale(domain=order), title=title,
        axis=alt.Axis(labelFontSize=10, ticks=False) if axis else None,
    )  # fmt: skip


def _sweep_frame(result: DatasetResult, category: str | None) -> pd.DataFrame:
    mean, low, high, n = _sweep(result, "dataset_sweep_heatmap").mean_kl(category)
    blocks, gens = np.meshgrid(np.arange(mean.shape[0]), np.arange(mean.shape[1]), indexing="ij")
    return pd.DataFrame(
        {
            "block": blocks.ravel(),
            "gen": gens.ravel(),
            "gen_label": [f"Gen{j}" for j in gens.ravel()],
            "kl": mean.ravel(),
            "low": low.ravel(),
            "high": high.ravel(),
            "n": n.ravel().astype(np.int64),
            "interval": interval_kind("kl_to_final"),
        }
    )


def dataset_sweep_heatmap(
    result: DatasetResult, category: str | None = None, *, kl_max: float | None = None
) -> alt.Chart:
    """The causal check: mean KL(clean || block l skipped at the template positions) of the
    next-token distribution at generated token j, blocks (y, block 0 at the bottom) x
    generated tokens (x). Colour as :func:`~lenskit.charts.sweep.sweep_heatmap`: fixed,
    clamped ``0 .. kl_max`` nats (default :data:`~lenskit.charts.sweep.SWEEP_KL_MAX`);
    n counts the prompts whose reply reached token j."""
    frame = _sweep_frame(result, category)
    hi = SWEEP_KL_MAX if kl_max is None else float(kl_max)
    if not hi > 0 or not math.isfinite(hi):
        raise InputError(f"kl_max must be a positive number of nats, got {kl_max!r}")
    n_blocks, n_gen = result.sweep.n_blocks, result.sweep.max_new_tokens
    cell_width = max(14, min(60, 850 // max(n_gen, 1)))
    cell_height = max(8, min(24, 620 // max(n_blocks, 1)))
    labels = [f"Gen{j}" for j in range(n_gen)]
    x = alt.X(
        "gen_label:N", sort=labels, scale=alt.Scale(domain=labels),
        title="generated token (Gen j = the j-th reply token)",
        axis=alt.Axis(labelAngle=0 if cell_width >= 40 else -90, ticks=False),
    )  # fmt: skip
    colour = alt.Color(
        "kl:Q",
        scale=alt.Scale(domain=[0.0, hi], scheme=SWEEP_SCHEME, clamp=True),
        title="Mean KL(clean \u2016 skipped) (nats)",
        legend=colour_legend(cell_height * n_blocks),
    )
    tooltip = [
        alt.Tooltip("block:O", title="skipped block"),
        alt.Tooltip("gen_label:N", title="generated token"),
        alt.Tooltip("kl:Q", title="mean KL(clean || skipped) (nats)", format=".4f"),
        alt.Tooltip("low:Q", title=f"{_INTERVAL}, low", format=".4f"),
        alt.Tooltip("high:Q", title=f"{_INTERVAL}, high", format=".4f"),
        alt.Tooltip("interval:N", title="interval"),
        alt.Tooltip("n:Q", title="prompts counted (n)"),
    ]
    chart = (
        alt.Chart(frame)
        .mark_rect(stroke="white", strokeWidth=0.5)
        .encode(x=x, y=_block_y(n_blocks), color=colour, tooltip=tooltip)
        .properties(
            width=cell_width * n_gen, height=cell_height * n_blocks,
            title=chart_title(
                "Causal check: KL when a block is skipped at the template positions",
                _subtitle(
                    result, category or "all prompts", count_noun(n_blocks, "block"),
                    "mean over the prompts whose reply reached Gen j",
                ),
            ),
            autosize=alt.AutoSizeParams(type="pad"),
        )
    )  # fmt: skip
    return configure(chart)


def _rate_bars(frame: pd.DataFrame, field: str, title: str, y: alt.Y, tooltip: list) -> list:
    """Horizontal bars of ``field`` on a fixed 0..1 axis with ``low``..``high`` error bars."""
    x = alt.X(f"{field}:Q", scale=alt.Scale(domain=[0.0, 1.0]), title=title)
    base = alt.Chart(frame)
    return [
        base.mark_bar(color="#4c78a8", opacity=0.8).encode(x=x, y=y, tooltip=tooltip),
        base.mark_rule(color="#111", strokeWidth=1.5).encode(
            x=alt.X("low:Q", scale=alt.Scale(domain=[0.0, 1.0])), x2="high:Q", y=y,
            tooltip=tooltip,
        ),
    ]  # fmt: skip


def dataset_flip_chart(result: DatasetResult, category: str | None = None) -> alt.LayerChart:
    """The share of the prompts whose reply held the gold answer and whose answer token is
    no longer the top-1 when block l is skipped, per block (block 0 at the bottom), with its
    Wilson 95% interval as an error bar."""
    rate, low, high, n = _sweep(result, "dataset_flip_chart").flip_rate(category)
    frame = pd.DataFrame(
        {
            "block": np.arange(rate.size),
            "rate": rate,
            "low": low,
            "high": high,
            "n": n.astype(np.int64),
            "interval": interval_kind("answer_hit"),
        }
    )
    tooltip = [
        alt.Tooltip("block:O", title="skipped block"),
        alt.Tooltip("rate:Q", title="answer flip rate", format=".3f"),
        alt.Tooltip("low:Q", title=f"{_INTERVAL}, low", format=".3f"),
        alt.Tooltip("high:Q", title=f"{_INTERVAL}, high", format=".3f"),
        alt.Tooltip("interval:N", title="interval"),
        alt.Tooltip("n:Q", title="answered prompts (n)"),
    ]
    y = _block_y(rate.size)
    layers = _rate_bars(frame, "rate", "answer flip rate (error bars: Wilson 95%)", y, tooltip)
    chart = alt.layer(*layers).properties(
        width=360, height=max(14 * rate.size, 110),
        title=chart_title(
            "Causal check: answers that flip when a block is skipped",
            _subtitle(
                result, category or "all prompts",
                f"{count_noun(int(n.max(initial=0)), 'prompt')} whose reply held its answer",
            ),
        ),
        autosize=alt.AutoSizeParams(type="pad"),
    )  # fmt: skip
    return configure(chart)


def _pooled_kl(sweep: SweepStats, category: str | None) -> tuple[np.ndarray, ...]:
    """``(mean, low, high, n)`` ``[L]``: KL pooled over every generated token of every prompt
    (the per-token sums added, so the interval is the pooled mean's)."""
    sums = {
        name: values.sum(axis=2, keepdims=True) if name.startswith("kl_") else values
        for name, values in sweep.sums.items()
    }
    pooled = SweepStats(sweep.groups, sweep.n_blocks, 1, sums)
    return tuple(a[:, 0] for a in pooled.mean_kl(category))


def _read_vs_cause_frame(result: DatasetResult, k: int, category: str | None) -> pd.DataFrame:
    """One row per block l: the best answer hit rate over the template columns at row l + 1
    (the block's output) with its interval and column, and the pooled KL of skipping l."""
    sweep = _sweep(result, "read_vs_cause_chart")
    cells = result.summary_frame("answer_hit", k, category)
    cells = cells[cells["column"] >= 0]
    rows = []
    kl, kl_low, kl_high, kl_n = _pooled_kl(sweep, category)
    for block in range(sweep.n_blocks):
        mine = cells[cells["row"] == block + 1].dropna(subset=["value"])
        best = mine.loc[mine["value"].idxmax()] if len(mine) else None
        rows.append(
            {
                "block": block,
                "read_row": result.rows[block + 1],
                "column_label": None if best is None else best["label"],
                "hit": np.nan if best is None else best["value"],
                "low": np.nan if best is None else best["low"],
                "high": np.nan if best is None else best["high"],
                "n": 0 if best is None else int(best["n"]),
                "kl": kl[block],
                "kl_low": kl_low[block],
                "kl_high": kl_high[block],
                "kl_n": int(kl_n[block]),
            }
        )
    return pd.DataFrame(rows)


def read_vs_cause_chart(
    result: DatasetResult, k: int = 1, category: str | None = None
) -> alt.HConcatChart:
    """Read vs cause, per block l (rows, block 0 at the bottom), two aligned panels: the best
    answer hit rate (rank < k) over the template columns at lens row l + 1, the output of
    block l, with its Wilson interval; beside it the mean KL of the reply's next-token
    distributions when block l is skipped at the template positions (pooled over the
    generated tokens, normal interval). A block whose output already holds the answer but
    whose removal changes little is read, not used."""
    if k not in HIT_KS:
        raise InputError(f"k must be one of {HIT_KS}, got {k!r}")
    frame = _read_vs_cause_frame(result, k, category)
    tooltip = [
        alt.Tooltip("block:O", title="block"),
        alt.Tooltip("read_row:N", title="lens row (block output)"),
        alt.Tooltip("column_label:N", title="best template column"),
        alt.Tooltip("hit:Q", title=f"answer hit rate (rank < {k})", format=".3f"),
        alt.Tooltip("low:Q", title=f"hit rate {_INTERVAL}, low", format=".3f"),
        alt.Tooltip("high:Q", title=f"hit rate {_INTERVAL}, high", format=".3f"),
        alt.Tooltip("n:Q", title="answered prompts (n)"),
        alt.Tooltip("kl:Q", title="mean KL when skipped (nats)", format=".4f"),
        alt.Tooltip("kl_low:Q", title=f"KL {_INTERVAL}, low", format=".4f"),
        alt.Tooltip("kl_high:Q", title=f"KL {_INTERVAL}, high", format=".4f"),
        alt.Tooltip("kl_n:Q", title="(prompt, token) pairs"),
    ]
    height = max(16 * len(frame), 110)
    read = alt.layer(
        *_rate_bars(
            frame,
            "hit",
            f"read: best answer hit rate, top-{k}",
            _block_y(len(frame), "block"),
            tooltip,
        )
    ).properties(width=260, height=height, title=f"Read ({interval_kind('answer_hit')})")
    hi = max(SWEEP_KL_MAX, _data_max(frame["kl_high"].to_numpy(dtype=np.float64), 0.0))
    kl_x = alt.X(
        "kl:Q", scale=alt.Scale(domain=[0.0, hi]), title="cause: mean KL when skipped (nats)"
    )
    y = _block_y(len(frame), axis=False)
    base = alt.Chart(frame)
    cause = alt.layer(
        base.mark_bar(color="#e45756", opacity=0.8).encode(x=kl_x, y=y, tooltip=tooltip),
        base.mark_rule(color="#111", strokeWidth=1.5).encode(
            x=alt.X("kl_low:Q", scale=alt.Scale(domain=[0.0, hi])), x2="kl_high:Q", y=y,
            tooltip=tooltip,
        ),
    ).properties(width=260, height=height, title=f"Cause ({interval_kind('kl_to_final')})")  # fmt: skip
    chart = (
        alt.hconcat(read, cause, spacing=12)
        .resolve_scale(y="shared")
        .properties(
            title=chart_title(
                "Read vs cause per block",
                _subtitle(result, category or "all prompts", count_noun(len(frame), "block")),
            )
        )
    )
    return configure(chart)
