"""The lens heatmap of a :class:`~lenskit.results.LensResult`: overview and labelled detail view.

:func:`lens_heatmap` draws read-out rows (y, ``emb`` at the bottom, ``out`` on top) x positions
(x), coloured by one :class:`~lenskit.charts.metrics.Metric` on its fixed domain. The overview
is light (no text, one tooltip line per quantity); the detail view labels each cell with its
top-1 token, lists the top-k tokens in the tooltip and boxes the chat-template tokens. The
cell data, tooltips and colour encoding here are shared with the generation view
(:mod:`lenskit.charts.sweep`).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from lenskit.charts.marks import cell_text, chart_title, colour_legend, configure
from lenskit.charts.metrics import (
    METRICS,
    Metric,
    clip_notes,
    clip_suffix,
    get_metric,
    metric_values,
)
from lenskit.charts.theme import (
    DEFAULT_DETAIL_WIDTH,
    DETAIL_CELLS_BUDGET,
    DETAIL_MAX_CELL,
    DETAIL_MAX_POSITIONS,
    DETAIL_MIN_CELL,
    DETAIL_TITLE_LIMIT,
    HIGHLIGHT_COLOR,
    HIGHLIGHT_DASH,
    RANK_CONVENTION,
    TEMPLATE_COLOR,
    TOOLTIP_TOP_K,
    display_rank,
    format_prob,
    lens_title,
    row_axis_values,
    shown,
    text_dark_mask,
)
from lenskit.errors import InputError
from lenskit.results import LensResult
from lenskit.text.tokens import format_token

__all__ = ["default_detail_range", "lens_heatmap", "selected_positions"]


# --- positions -------------------------------------------------------------------------------


def _positions(result: LensResult, positions: Any) -> np.ndarray:
    t = result.n_positions
    if positions is None:
        return np.arange(t)
    if isinstance(positions, slice):
        return np.arange(t)[positions]
    pos = np.unique(np.asarray(list(positions), dtype=np.int64))
    if pos.size and (pos[0] < 0 or pos[-1] >= t):
        raise InputError(f"positions must lie in [0, {t}), got {pos[0]}..{pos[-1]}")
    return pos


def default_detail_range(result: LensResult, width: int = DEFAULT_DETAIL_WIDTH) -> tuple[int, int]:
    """Inclusive ``(first, last)`` of the default detail view: the last ``width`` positions.

    Widened to the left when needed so every template position is included (up to
    :data:`~lenskit.charts.theme.DETAIL_MAX_POSITIONS`).
    """
    t = result.n_positions
    first = max(0, t - width)
    if result.template_positions.size:
        first = min(first, int(result.template_positions.min()))
    first = max(first, t - DETAIL_MAX_POSITIONS, 0)
    return first, t - 1


def selected_positions(selection: Any, field: str = "position") -> list[int]:
    """Positions in a Streamlit/Vega-Lite selection payload (interval or point), sorted.

    Accepts ``{"position": [3, 4, 5]}`` (interval on an ordinal x), ``{"position": [3, 9]}``,
    ``[{"position": 7}]`` (point) or the whole ``{"selection": {"brush": ...}}`` event.
    """
    found: list[int] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key == field:
                    values = value if isinstance(value, (list, tuple)) else [value]
                    for v in values:
                        with contextlib.suppress(TypeError, ValueError):
                            found.append(int(v))
                else:
                    walk(value)
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item)

    walk(selection)
    return sorted(set(found))


# --- cell data, tooltips and colours (shared with the generation view) ----------------------


def _colour_norm(metric: Metric, flat: np.ndarray, vocab_size: int) -> tuple[np.ndarray, Any]:
    """What is coloured (log scales: clipped into the domain, log 0 is not drawable) and where
    each value falls on the colour ramp (0 = blue end, 1 = red end)."""
    lo, hi = metric.domain(vocab_size)
    if metric.scale_type == "log":
        colour = np.clip(flat, lo, hi)
        norm = (np.log(colour) - math.log(lo)) / (math.log(hi) - math.log(lo))
    else:
        colour = flat
        norm = (np.clip(flat, lo, hi) - lo) / (hi - lo)
    return colour, np.where(metric.reverse, norm, 1.0 - norm)


def _detail_columns(result: LensResult, pos: np.ndarray, norm: Any) -> dict[str, Any]:
    """The labelled views' extra columns: cell text, every metric with a tooltip line, the
    top-k texts and the target's rank."""
    top1 = result.top_tokens[:, pos, 0].ravel()
    data: dict[str, Any] = {
        "label": [shown(result, s, 8) for s in top1],
        "dark": text_dark_mask(norm),
    }
    for m in METRICS.values():
        values = m.read(result) if m.tooltip else None
        if values is not None:
            data[m.key] = values[:, pos].ravel()
    for j in range(min(result.top_k, TOOLTIP_TOP_K)):
        toks = result.top_tokens[:, pos, j].ravel()
        probs = result.top_probs[:, pos, j].ravel()
        data[f"top{j + 1}_text"] = [
            f"{shown(result, s, 24)}  {format_prob(p)}" for s, p in zip(toks, probs, strict=True)
        ]
    if result.top_k > TOOLTIP_TOP_K:
        data["more"] = f"{result.top_k - TOOLTIP_TOP_K} more in the drill-down table"
    if result.target_rank is not None:
        data["target_rank"] = display_rank(result.target_rank[:, pos].ravel())
    return data


def cell_frame(result: LensResult, metric: Metric, pos: np.ndarray, detail: bool) -> pd.DataFrame:
    """One row per (read-out row, position) cell: the coloured value, and with ``detail`` the
    cell text and everything its tooltip lists. A ``scale_note`` column says which values lie
    outside the colour domain, when any do."""
    flat = metric_values(result, metric)[:, pos].ravel().astype(np.float64)
    r = result.n_rows
    position = np.tile(pos, r)
    colour, norm = _colour_norm(metric, flat, result.vocab_size)
    data: dict[str, Any] = {
        "position": position,
        "layer": result.layer_names[np.repeat(np.arange(r), pos.size)].astype(str),
        "token": [shown(result, result.tokens[p], 16) for p in position],
        "value": flat,
        "colour": colour,
        "top1": [shown(result, s, 16) for s in result.top_tokens[:, pos, 0].ravel()],
    }
    notes = clip_notes(metric, flat, result.vocab_size)
    if notes is not None:
        data["scale_note"] = notes
    if detail:
        data.update(_detail_columns(result, pos, norm))
    return pd.DataFrame(data)


def top_k_tooltip(result: LensResult) -> list[Any]:
    """Tooltip lines top 1..top min(k, TOOLTIP_TOP_K), then how many more there are."""
    lines: list[Any] = [
        alt.Tooltip(f"top{j + 1}_text:N", title=f"top {j + 1}")
        for j in range(min(result.top_k, TOOLTIP_TOP_K))
    ]
    if result.top_k > TOOLTIP_TOP_K:
        lines.append(alt.Tooltip("more:N", title=f"top {TOOLTIP_TOP_K + 1}..{result.top_k}"))
    return lines


def metric_tooltips(
    result: LensResult, frame: pd.DataFrame, *, skip: str | None = None, generation: bool = False
) -> list[Any]:
    """One tooltip line per metric with a line of its own and values in ``frame`` (not
    ``skip``, the coloured one, whose value line is already there)."""
    lines = []
    for m in METRICS.values():
        if m.key == skip or m.key not in frame.columns or (generation and not m.generation):
            continue
        title = m.tooltip_title(result)
        if title is not None:
            lines.append(alt.Tooltip(f"{m.key}:Q", title=title, format=m.format))
    return lines


def scale_note_tooltip(frame: pd.DataFrame) -> list[Any]:
    """The "colour scale" tooltip line when some cells lie outside the colour domain."""
    if "scale_note" not in frame.columns:
        return []
    return [alt.Tooltip("scale_note:N", title="colour scale")]


def metric_colour(
    metric: Metric, vocab_size: int, values: np.ndarray, height: int, **legend: Any
) -> alt.Color:
    """The colour encoding of field ``colour``: the metric's fixed, clamped domain; the legend
    title says where values outside it were clipped."""
    lo, hi = metric.domain(vocab_size)
    title = metric.label
    suffix = clip_suffix(metric, values, vocab_size)
    if suffix:  # "Target probability (log scale, clipped at 1e-5)"
        title = f"{title[:-1]}{suffix})" if title.endswith(")") else f"{title}{suffix}"
    scale = alt.Scale(
        type=metric.scale_type,
        domain=[lo, hi],
        scheme=metric.scheme,
        reverse=metric.reverse,
        clamp=True,
    )
    return alt.Color("colour:Q", scale=scale, title=title, legend=colour_legend(height, **legend))


# --- the lens heatmap's parts ----------------------------------------------------------------


def _label_expr(result: LensResult, pos: np.ndarray, max_len: int) -> str:
    """Vega expression mapping a position (the axis value) to its token's display string."""
    table = {int(p): shown(result, result.tokens[p], max_len) for p in pos}
    # json.dumps(ensure_ascii) gives a valid Vega expression object literal with \\u escapes.
    return f"{json.dumps({str(k): v for k, v in table.items()})}[''+datum.value]"


def _template_runs(result: LensResult, pos: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs ``(first, last)`` of template positions inside ``pos``."""
    in_view = set(pos.tolist())
    tpl = sorted(int(p) for p in result.template_positions if int(p) in in_view)
    runs: list[tuple[int, int]] = []
    for p in tpl:
        if runs and p == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], p)
        else:
            runs.append((p, p))
    return runs


def _title(result: LensResult, metric: Metric, pos: np.ndarray, detail: bool) -> alt.TitleParams:
    what = lens_title(result.lens) + (", top-1 token per cell" if detail else "")
    span = f"positions {int(pos[0])}\u2013{int(pos[-1])}" if pos.size else "no positions"
    if pos.size == 1:
        span = f"position {int(pos[0])}"
    name = metric.label
    if metric.needs_target and result.target is not None:
        name = f"{name} of {format_token(str(result.target), 16)}"
    return chart_title(
        f"{what}: {name}",
        f"{result.model_name or 'model'} \u00b7 {span} of {result.n_positions} \u00b7 "
        f"{result.n_rows} read-outs (emb \u2192 out)",
        # Streamlit cuts a title without a limit to its guess of the chart's width, which is
        # too small for a narrow detail range (the chart is only as wide as its plot).
        **({"limit": DETAIL_TITLE_LIMIT} if detail else {}),
    )


def _cell_size(
    result: LensResult, n_pos: int, labels: bool, width: int | None, height: int | None
) -> tuple[int, int]:
    """Pixels per cell: the detail view's labelled cells shrink only past its budget."""
    if height is None:
        height = 18 if labels else max(5, min(12, 260 // max(result.n_rows, 1)))
    if width is None:
        if labels:
            per_cell = DETAIL_CELLS_BUDGET // max(n_pos, 1)
            width = max(DETAIL_MIN_CELL, min(DETAIL_MAX_CELL, per_cell))
        else:
            width = max(4, min(28, 1100 // max(n_pos, 1)))
    return width, height


def _position_x(
    result: LensResult, pos: np.ndarray, labels: bool, highlight: Any
) -> tuple[alt.X, alt.Scale]:
    """The positions' x encoding (token labels, template tokens in purple) and its scale."""
    template = {int(p) for p in result.template_positions}
    template_test = f"indexof({json.dumps(sorted(template))}, datum.value) >= 0"
    # The overview's axis title is its colour key: each colour/box means one thing.
    x_title = ["position (token)"]
    if not labels:
        if template & set(pos.tolist()):
            x_title.append("template tokens in purple")
        if highlight is not None:
            x_title.append("dashed box: detail view")
    thinned = not labels and pos.size > 80  # at most ~80 labels in the overview
    axis = alt.Axis(
        title="; ".join(x_title),
        labelExpr=_label_expr(result, pos, 10 if labels else 8),
        labelAngle=-50 if labels else -90,
        labelAlign="right",
        labelFontSize=11 if labels else 9,
        labelOverlap=(not labels) and pos.size > 60,
        labelColor=alt.condition(template_test, alt.value(TEMPLATE_COLOR), alt.value("#222")),
        labelFontWeight=alt.condition(template_test, alt.value("bold"), alt.value("normal")),
        labelLimit=90,
        ticks=False,
        **({"values": [int(p) for p in pos[:: -(-pos.size // 80)]]} if thinned else {}),
    )
    scale = alt.Scale(domain=[int(p) for p in pos], padding=0)
    return alt.X("position:O", axis=axis, scale=scale), scale


def _rows_y(result: LensResult, labels: bool, cell_height: int) -> alt.Y:
    """Read-out rows on y, ``out`` on top and ``emb`` at the bottom."""
    layer_order = [str(x) for x in result.layer_names[::-1]]
    r = result.n_rows
    axis: dict[str, Any] = {"labelFontSize": 10 if labels else 9, "ticks": False}
    if cell_height < 10 and r > 12:  # thin rows: label emb, out and every 5th block
        # Block rows only (emb, 1 .. L-1, out): sub-block rows "i.attn" stay unlabelled.
        n_block_rows = sum(1 for n in layer_order if n.isdigit()) + 2
        axis["values"] = row_axis_values(layer_order, 5 if n_block_rows <= 60 else 10)
    return alt.Y("layer:N", sort=layer_order, title="layer (read-out)", axis=alt.Axis(**axis))


def _lens_tooltip(
    result: LensResult, metric: Metric, frame: pd.DataFrame, labels: bool
) -> list[Any]:
    """The cells' tooltip: where, the coloured value, then (detail) every other quantity once
    and the top-k tokens, or (overview) just the top-1 token."""
    tooltip: list[Any] = [
        alt.Tooltip("position:O", title="position"),
        alt.Tooltip("token:N", title="input token"),
        alt.Tooltip("layer:N", title="layer"),
        alt.Tooltip("value:Q", title=metric.label, format=metric.format),
        *scale_note_tooltip(frame),
    ]
    if not labels:
        return [*tooltip, alt.Tooltip("top1:N", title="top-1 token")]
    tooltip += metric_tooltips(result, frame, skip=metric.key)
    if "target_rank" in frame.columns:
        tooltip.append(alt.Tooltip("target_rank:Q", title=f"target rank ({RANK_CONVENTION})"))
    return tooltip + top_k_tooltip(result)


def _box_runs(
    result: LensResult, pos: np.ndarray, labels: bool, highlight: Any, marked: int | None
) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """Boxes to draw, each ``(rows, stroke)``: template runs in the detail view (purple), the
    detail range in the overview (a black-and-white dashed "marquee": purple means template
    tokens only), and the drill-down's position in the detail view."""
    boxes: list[dict[str, Any]] = []
    strokes: list[dict[str, Any]] = []
    if labels:
        boxes = [
            {"first": a, "last": b, "kind": "template"} for a, b in _template_runs(result, pos)
        ]
        strokes = [{"stroke": TEMPLATE_COLOR, "strokeWidth": 3}]
    elif highlight is not None:
        a, b = max(int(highlight[0]), int(pos[0])), min(int(highlight[1]), int(pos[-1]))
        if a <= b:
            boxes = [{"first": a, "last": b, "kind": "detail range"}]
        strokes = [
            {"stroke": "white", "strokeWidth": 3},  # visible on dark cells too
            {"stroke": HIGHLIGHT_COLOR, "strokeWidth": 2, "strokeDash": HIGHLIGHT_DASH},
        ]
    runs = [(boxes, stroke) for stroke in strokes] if boxes else []
    if labels and marked is not None and int(marked) in set(pos.tolist()):
        # After the template boxes, so it is drawn on top of a purple one.
        mark = [{"first": int(marked), "last": int(marked), "kind": "drill-down position"}]
        runs += [
            (mark, {"stroke": "white", "strokeWidth": 4}),
            (mark, {"stroke": HIGHLIGHT_COLOR, "strokeWidth": 2}),
        ]
    return runs


def _box_layer(rows: list[dict[str, Any]], stroke: dict[str, Any], x_scale: Any) -> alt.Chart:
    return (
        alt.Chart(pd.DataFrame(rows))
        .mark_rect(fill=None, cornerRadius=2, **stroke)
        .encode(
            # a band scale maps a value to its band's start: bandPosition 1 on x2 reaches
            # the end of the last band, so the box covers whole columns.
            x=alt.X("first:O", scale=x_scale, bandPosition=0),
            x2=alt.X2("last", bandPosition=1),
            tooltip=[alt.Tooltip("kind:N", title="box")],
        )
    )


def _cells(
    base: alt.Chart, encoding: dict[str, Any], labels: bool, brush: bool, click: bool
) -> alt.Chart:
    """The coloured cells, with the brush / click selections."""
    cells = base.mark_rect(stroke="white" if labels else None, strokeWidth=0.5 if labels else 0)
    cells = cells.encode(**encoding)
    if brush:
        cells = cells.add_params(alt.selection_interval(name="brush", encodings=["x"]))
    if click:
        cells = cells.add_params(
            alt.selection_point(name="pick", fields=["position"], on="click", clear="dblclick")
        )
    return cells


def lens_heatmap(
    result: LensResult,
    metric: str = "entropy",
    *,
    positions: Sequence[int] | slice | None = None,
    labels: bool = True,
    brush: bool = False,
    click: bool = False,
    highlight: tuple[int, int] | None = None,
    marked: int | None = None,
    cell_width: int | None = None,
    cell_height: int | None = None,
) -> alt.LayerChart:
    """Layers x positions heatmap of one metric.

    Args:
        result: the lens result.
        metric: a key of :data:`~lenskit.charts.metrics.METRICS`.
        positions: positions to show (default all), e.g. ``range(20, 32)``.
        labels: detail view: each cell shows its top-1 token, the tooltip lists the top-k
            tokens, and the template tokens are boxed. False: overview, cells without text.
        brush: add an interval selection named ``"brush"`` on x (field ``position``); in
            Streamlit ``on_select="rerun"`` returns ``{"selection": {"brush": {"position":
            [...]}}}``.
        click: add a point selection named ``"pick"`` on the clicked cell's position.
        highlight: inclusive ``(first, last)`` positions boxed in the overview (the range the
            detail view shows).
        marked: detail view: a position outlined in black (the drill-down's), if shown.
        cell_width, cell_height: pixels per cell (defaults depend on the view and R).

    Returns:
        A layered Altair chart with a fixed colour domain (see
        :data:`~lenskit.charts.metrics.METRICS`); the title names the lens (``result.lens``).
    """
    spec = get_metric(metric)
    pos = _positions(result, positions)
    frame = cell_frame(result, spec, pos, detail=labels)
    cell_width, cell_height = _cell_size(result, pos.size, labels, cell_width, cell_height)
    # Detail: the plot is exactly ``cell_width`` per position, the axes, legend and title are
    # drawn around it (autosize "pad"), so a narrow range keeps readable cells. The overview
    # is stretched to the container ("fit-x"), so its width is only a starting size. (Streamlit's
    # default "fit" would squeeze titles and axes into ``height``.)
    width = cell_width * pos.size if labels else max(cell_width * pos.size, 120)
    height = cell_height * result.n_rows
    x, x_scale = _position_x(result, pos, labels, highlight)
    y = _rows_y(result, labels, cell_height)
    legend = {"format": ".0e"} if spec.scale_type == "log" else {}
    colour = metric_colour(spec, result.vocab_size, frame["value"].to_numpy(), height, **legend)
    tooltip = _lens_tooltip(result, spec, frame, labels)
    encoding = {"x": x, "y": y, "color": colour, "tooltip": tooltip}
    base = alt.Chart(frame)
    layers: list[Any] = [_cells(base, encoding, labels, brush, click)]
    if labels:
        layers.append(cell_text(base, x, y, tooltip, fontSize=10, limit=cell_width - 2))
    for rows, stroke in _box_runs(result, pos, labels, highlight, marked):
        layers.append(_box_layer(rows, stroke, x_scale))
    autosize = (
        alt.AutoSizeParams(type="pad")
        if labels
        else alt.AutoSizeParams(type="fit-x", contains="padding")
    )
    chart = alt.layer(*layers).properties(
        width=width, height=height, title=_title(result, spec, pos, labels), autosize=autosize
    )
    return configure(chart)
