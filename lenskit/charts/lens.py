"""Altair charts of a :class:`~lenskit.lens.LensResult`, shared by the Streamlit app and the CLI.

Every builder is a pure function ``result -> alt.Chart``: no Streamlit, no tensors. The data
are pandas DataFrames (Streamlit ships them as Arrow); :func:`chart_spec` inlines them without
touching Altair's global data transformers or its 5,000-row limit. :func:`save_chart` / :func:`chart_bytes` render PNG and SVG
offline with ``vl_convert`` and write standalone HTML with the Vega, Vega-Lite and
vega-embed JavaScript inlined, so the HTML opens without network access.

Layout conventions (the seed figures'): layers on y with ``emb`` at the bottom and ``out`` at
the top, positions on x (one column per position, so repeated tokens stay separate), a fixed
colour domain per metric (blue = low entropy / confident, red = high entropy), and the
chat-template ("dummy") tokens boxed and coloured on the x axis.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from lenskit.lens import LensResult
from lenskit.tokens import format_token

__all__ = [
    "METRICS",
    "Metric",
    "DETAIL_MAX_POSITIONS",
    "PROB_FORMAT",
    "PROB_PRINTF",
    "RANK_CONVENTION",
    "chart_bytes",
    "chart_spec",
    "default_detail_range",
    "display_rank",
    "format_prob",
    "lens_heatmap",
    "metric_values",
    "position_drilldown_chart",
    "position_table",
    "save_chart",
    "selected_positions",
]

#: Most positions the labelled (detail) heatmap shows at once; wider ranges are cut.
DETAIL_MAX_POSITIONS = 40
#: Positions the detail view shows by default: the end of the question + the template tokens.
DEFAULT_DETAIL_WIDTH = 12

#: Most pixels of the detail view's title and subtitle (wider than any narrow plot).
DETAIL_TITLE_LIMIT = 900
#: Pixels the detail view's cells may take together before they shrink (from 62 px each down
#: to DETAIL_MIN_CELL): 40 positions then stay in a ~1000 px column with their legend.
DETAIL_CELLS_BUDGET = 880
DETAIL_MAX_CELL = 62
DETAIL_MIN_CELL = 22
#: Top-k entries a cell's tooltip lists; the drill-down table and the exports keep all k (a
#: top-50 tooltip was taller than the window).
TOOLTIP_TOP_K = 10
#: Pixels the sweep / generation heatmaps' cells may take together (axes and legend come on
#: top, ~200 px).
GEN_CELLS_BUDGET = 850
#: Least plot height of the generation heatmaps: a 1-4 block sweep kept its axis title and
#: colour legend cut or overlapping at 26 px per row.
MIN_PLOT_HEIGHT = 110

TEMPLATE_COLOR = "#7b2ff7"  # template ("dummy") tokens: box and axis labels (purple)
#: The detail range, boxed in the overview: black dashes over a white line (a "marquee"),
#: so that purple means only "template token" and the box shows on dark and light cells.
HIGHLIGHT_COLOR = "#111111"
HIGHLIGHT_DASH = [6, 3]
PROB_FLOOR = 1e-5  # target probabilities are drawn on a log scale from here to 1
#: Ranks shown to users are 1-based (1 = the top-1 token); ``LensResult.target_rank`` (the
#: data and exports) stays 0-based. Every label of a displayed rank says which it is.
RANK_CONVENTION = "1 = top"
#: Probabilities are shown with 3 significant digits in exponent notation everywhere
#: ("9.98e-1", "6.12e-6", "4.17e-7"): 6.2e-6 does not read "0.000", and one column (or one
#: tooltip field) keeps one style. The "g" formats switched style inside a column (QA: the
#: browser writes %.3g / .3~g as 0.00000612 above 1e-6 and 4.17e-7 below).
#: d3-format of probabilities in tooltips.
PROB_FORMAT = ".2e"
#: printf-format of probabilities in tables (``st.column_config.NumberColumn``, sprintf-js).
PROB_PRINTF = "%.2e"


def display_rank(rank: Any) -> np.ndarray:
    """0-based ranks (``LensResult.target_rank``) as shown to users: 1-based (1 = top)."""
    return np.asarray(rank, dtype=np.int64) + 1


def format_prob(p: float) -> str:
    """A probability as :data:`PROB_FORMAT` writes it: "9.98e-1", "1.23e-2", "6.20e-6"."""
    p = float(p)
    if not math.isfinite(p):
        return str(p)
    mantissa, exponent = f"{p:.2e}".split("e")
    return f"{mantissa}e{int(exponent):+d}"


@dataclass(frozen=True)
class Metric:
    """How one per-cell quantity is coloured.

    Attributes:
        key: the metric's name (a key of :data:`METRICS`).
        title: axis/legend title.
        units: "nats" or "probability".
        scheme: Vega colour scheme name.
        reverse: reverse the scheme; every metric maps "confident / close to the final
            prediction" to blue and "uncertain / far" to red.
        scale_type: "linear" or "log".
        log_domain_max: the domain's upper end is ln V (entropy's maximum) rather than a constant.
        domain_max: upper end of the domain when ``log_domain_max`` is False.
        domain_min: lower end of the domain.
        needs_target: only defined when the run had a target token.
    """

    key: str
    title: str
    units: str
    scheme: str = "redblue"
    reverse: bool = False
    scale_type: str = "linear"
    log_domain_max: bool = False
    domain_min: float = 0.0
    domain_max: float = 1.0
    needs_target: bool = False

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


#: Metric key -> how it is coloured. Domains are fixed (independent of the data) so that two
#: prompts or two models can be compared by colour.
METRICS: dict[str, Metric] = {
    "entropy": Metric(
        "entropy", "Entropy", "nats", reverse=True, log_domain_max=True
    ),  # 0 .. ln V: blue = low (confident), red = high (uniform)
    "kl_to_final": Metric(
        "kl_to_final", "KL(out \u2016 layer)", "nats", reverse=True, log_domain_max=True
    ),  # 0 .. ln V, clamped: blue = already the final distribution
    "top1_prob": Metric("top1_prob", "Top-1 probability", "probability"),  # blue = high
    "target_prob": Metric(
        "target_prob",
        "Target probability",
        "probability",
        scale_type="log",
        domain_min=PROB_FLOOR,
        needs_target=True,
    ),  # log scale 1e-5 .. 1: blue = the target is likely
}


def _metric(metric: str) -> Metric:
    try:
        return METRICS[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(METRICS)}") from None


def metric_values(result: LensResult, metric: str) -> np.ndarray:
    """The ``[R, T]`` array a metric colours (raises ValueError when it is not available)."""
    spec = _metric(metric)
    if metric == "entropy":
        return result.entropy
    if metric == "kl_to_final":
        return result.kl_to_final
    if metric == "top1_prob":
        return result.top_probs[:, :, 0]
    if result.target_prob is None:
        raise ValueError(f"metric {spec.key!r} needs a target token; this result has none")
    return result.target_prob


def _positions(result: LensResult, positions: Any) -> np.ndarray:
    t = result.n_positions
    if positions is None:
        return np.arange(t)
    if isinstance(positions, slice):
        return np.arange(t)[positions]
    pos = np.unique(np.asarray(list(positions), dtype=np.int64))
    if pos.size and (pos[0] < 0 or pos[-1] >= t):
        raise ValueError(f"positions must lie in [0, {t}), got {pos[0]}..{pos[-1]}")
    return pos


def default_detail_range(result: LensResult, width: int = DEFAULT_DETAIL_WIDTH) -> tuple[int, int]:
    """Inclusive ``(first, last)`` of the default detail view: the last ``width`` positions.

    Widened to the left when needed so every template position is included (up to
    :data:`DETAIL_MAX_POSITIONS`).
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


def _shown(result: Any, raw: Any, max_len: int) -> str:
    """A vocabulary string of ``result`` (LensResult / SweepResult) for display."""
    return format_token(str(raw), max_len, byte_level=getattr(result, "byte_level", None))


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-safe records: native Python scalars, NaN/inf as null."""
    clean = frame.replace([np.inf, -np.inf], np.nan).astype(object)
    clean = clean.where(clean.notna(), None)
    return clean.to_dict(orient="records")


def _text_dark_mask(norm: np.ndarray) -> np.ndarray:
    """True where the cell colour is dark enough that its label should be white."""
    return (norm < 0.2) | (norm > 0.8)


def _cell_frame(result: LensResult, metric: Metric, pos: np.ndarray, detail: bool) -> pd.DataFrame:
    values = metric_values(result, metric.key)[:, pos]
    r = result.n_rows
    layer_idx = np.repeat(np.arange(r), pos.size)
    position = np.tile(pos, r)
    lo, hi = metric.domain(result.vocab_size)
    flat = values.ravel().astype(np.float64)
    if metric.scale_type == "log":
        colour = np.clip(flat, lo, hi)
        norm = (np.log(colour) - math.log(lo)) / (math.log(hi) - math.log(lo))
    else:
        colour = flat
        norm = (np.clip(flat, lo, hi) - lo) / (hi - lo)
    norm = np.where(metric.reverse, norm, 1.0 - norm)  # 0 = blue end, 1 = red end
    data: dict[str, Any] = {
        "position": position,
        "layer": result.layer_names[layer_idx].astype(str),
        "token": [_shown(result, result.tokens[p], 16) for p in position],
        "value": flat,
        "colour": colour,
        "top1": [_shown(result, s, 16) for s in result.top_tokens[:, pos, 0].ravel()],
    }
    if detail:
        data["label"] = [_shown(result, s, 8) for s in result.top_tokens[:, pos, 0].ravel()]
        data["dark"] = _text_dark_mask(norm)
        data["entropy"] = result.entropy[:, pos].ravel()
        data["kl_to_final"] = result.kl_to_final[:, pos].ravel()
        for j in range(min(result.top_k, TOOLTIP_TOP_K)):
            toks = result.top_tokens[:, pos, j].ravel()
            probs = result.top_probs[:, pos, j].ravel()
            data[f"top{j + 1}_text"] = [
                f"{_shown(result, s, 24)}  {format_prob(p)}"
                for s, p in zip(toks, probs, strict=True)
            ]
        if result.top_k > TOOLTIP_TOP_K:
            data["more"] = f"{result.top_k - TOOLTIP_TOP_K} more in the drill-down table"
        if result.target_prob is not None:
            data["target_prob"] = result.target_prob[:, pos].ravel()
            data["target_rank"] = display_rank(result.target_rank[:, pos].ravel())
    return pd.DataFrame(data)


def _top_k_tooltip(result: LensResult) -> list[Any]:
    """Tooltip lines top 1..top min(k, TOOLTIP_TOP_K), then how many more there are."""
    lines: list[Any] = [
        alt.Tooltip(f"top{j + 1}_text:N", title=f"top {j + 1}")
        for j in range(min(result.top_k, TOOLTIP_TOP_K))
    ]
    if result.top_k > TOOLTIP_TOP_K:
        lines.append(alt.Tooltip("more:N", title=f"top {TOOLTIP_TOP_K + 1}..{result.top_k}"))
    return lines


def _label_expr(result: LensResult, pos: np.ndarray, max_len: int) -> str:
    """Vega expression mapping a position (the axis value) to its token's display string."""
    table = {int(p): _shown(result, result.tokens[p], max_len) for p in pos}
    # json.dumps(ensure_ascii) gives a valid Vega expression object literal with \\u escapes.
    return f"{json.dumps({str(k): v for k, v in table.items()})}[''+datum.value]"


def _template_runs(result: LensResult, pos: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs ``(first, last)`` of template positions inside ``pos``."""
    shown = set(pos.tolist())
    tpl = sorted(int(p) for p in result.template_positions if int(p) in shown)
    runs: list[tuple[int, int]] = []
    for p in tpl:
        if runs and p == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], p)
        else:
            runs.append((p, p))
    return runs


def _chart_title(text: str, subtitle: str, **kwargs: Any) -> alt.TitleParams:
    """The heatmaps' title: left-aligned, grey subtitle."""
    return alt.TitleParams(
        text=text,
        subtitle=subtitle,
        anchor="start",
        fontSize=14,
        subtitleFontSize=11,
        subtitleColor="#555",
        **kwargs,
    )


def _colour_legend(height: int, **kwargs: Any) -> alt.Legend:
    """A vertical colour legend on the right: title and gradient as tall as the plot where it
    is 84 px or more (the gradient: 60..300 px; QA: a 120 px gradient beside a 110 px plot ran
    into the x-axis title)."""
    return alt.Legend(orient="right", gradientLength=max(60, min(height - 24, 300)), **kwargs)


def _cell_text(base: alt.Chart, x: Any, y: Any, tooltip: list[Any], **mark: Any) -> alt.Chart:
    """Each cell's ``label`` field as text, white on dark cells (``dark`` field)."""
    return base.mark_text(baseline="middle", **mark).encode(
        x=x,
        y=y,
        text="label:N",
        color=alt.condition("datum.dark", alt.value("white"), alt.value("#111")),
        tooltip=tooltip,
    )


def _title(result: LensResult, metric: Metric, pos: np.ndarray, detail: bool) -> alt.TitleParams:
    what = "Logit lens" if not detail else "Logit lens, top-1 token per cell"
    span = f"positions {int(pos[0])}\u2013{int(pos[-1])}" if pos.size else "no positions"
    if pos.size == 1:
        span = f"position {int(pos[0])}"
    model = result.model_name or "model"
    name = metric.label
    if metric.needs_target and result.target is not None:
        name = f"{name} of {format_token(str(result.target), 16)}"
    return _chart_title(
        f"{what}: {name}",
        f"{model} \u00b7 {span} of {result.n_positions} \u00b7 "
        f"{result.n_rows} read-outs (emb \u2192 out)",
        # Streamlit cuts a title without a limit to its guess of the chart's width, which is
        # too small for a narrow detail range (the chart is only as wide as its plot).
        **({"limit": DETAIL_TITLE_LIMIT} if detail else {}),
    )


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
        metric: a key of :data:`METRICS`.
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
        A layered Altair chart with a fixed colour domain (see :data:`METRICS`).
    """
    spec = _metric(metric)
    pos = _positions(result, positions)
    frame = _cell_frame(result, spec, pos, detail=labels)
    r = result.n_rows
    if cell_height is None:
        cell_height = 18 if labels else max(5, min(12, 260 // max(r, 1)))
    if cell_width is None:
        if labels:
            per_cell = DETAIL_CELLS_BUDGET // max(pos.size, 1)
            cell_width = max(DETAIL_MIN_CELL, min(DETAIL_MAX_CELL, per_cell))
        else:
            cell_width = max(4, min(28, 1100 // max(pos.size, 1)))
    # Detail: the plot is exactly ``cell_width`` per position, the axes, legend and title are
    # drawn around it (autosize "pad" below), so a narrow range keeps readable cells. The
    # overview is stretched to the container (fit-x), so its width is only a starting size.
    width = cell_width * pos.size if labels else max(cell_width * pos.size, 120)
    height = cell_height * r

    lo, hi = spec.domain(result.vocab_size)
    colour_scale = alt.Scale(
        type=spec.scale_type,
        domain=[lo, hi],
        scheme=spec.scheme,
        reverse=spec.reverse,
        clamp=True,
    )
    layer_order = [str(x) for x in result.layer_names[::-1]]  # "out" on top, "emb" at bottom
    template = {int(p) for p in result.template_positions}
    template_test = f"indexof({json.dumps(sorted(template))}, datum.value) >= 0"
    n_labels = pos.size if labels else min(pos.size, 80)
    # The overview's axis title is its colour key: each colour/box means one thing.
    x_title = ["position (token)"]
    if not labels:
        if template & set(pos.tolist()):
            x_title.append("template tokens in purple")
        if highlight is not None:
            x_title.append("dashed box: detail view")
    x_axis = alt.Axis(
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
        **(
            {} if n_labels == pos.size else {"values": [int(p) for p in pos[:: -(-pos.size // 80)]]}
        ),
    )
    x_scale = alt.Scale(domain=[int(p) for p in pos], padding=0)
    x = alt.X("position:O", axis=x_axis, scale=x_scale)
    y_axis: dict[str, Any] = {"labelFontSize": 10 if labels else 9, "ticks": False}
    if cell_height < 10 and r > 12:  # thin rows: label emb, out and every 5th block
        step = 5 if r <= 60 else 10
        y_axis["values"] = [n for i, n in enumerate(layer_order) if n in ("emb", "out")] + [
            str(i) for i in range(step, r - 1, step)
        ]
    y = alt.Y("layer:N", sort=layer_order, title="layer (read-out)", axis=alt.Axis(**y_axis))
    colour = alt.Color(
        "colour:Q",
        scale=colour_scale,
        title=spec.label,
        legend=_colour_legend(height, **({"format": ".0e"} if spec.scale_type == "log" else {})),
    )
    value_fmt = ".3f" if spec.units == "nats" else PROB_FORMAT
    tooltip: list[Any] = [
        alt.Tooltip("position:O", title="position"),
        alt.Tooltip("token:N", title="input token"),
        alt.Tooltip("layer:N", title="layer"),
        alt.Tooltip("value:Q", title=spec.label, format=value_fmt),
    ]
    if labels:
        # the coloured metric is already the "value" line: list each other quantity once
        if spec.key != "entropy":
            tooltip.append(alt.Tooltip("entropy:Q", title="entropy (nats)", format=".3f"))
        if spec.key != "kl_to_final":
            tooltip.append(
                alt.Tooltip("kl_to_final:Q", title="KL(out || layer) (nats)", format=".3f")
            )
        if result.target_prob is not None:
            target = format_token(str(result.target), 16)
            if spec.key != "target_prob":
                tooltip.append(
                    alt.Tooltip("target_prob:Q", title=f"p({target})", format=PROB_FORMAT)
                )
            tooltip.append(alt.Tooltip("target_rank:Q", title=f"target rank ({RANK_CONVENTION})"))
        tooltip += _top_k_tooltip(result)
    else:
        tooltip.append(alt.Tooltip("top1:N", title="top-1 token"))

    base = alt.Chart(frame)
    cells = base.mark_rect(stroke="white" if labels else None, strokeWidth=0.5 if labels else 0)
    cells = cells.encode(x=x, y=y, color=colour, tooltip=tooltip)
    if brush:
        cells = cells.add_params(alt.selection_interval(name="brush", encodings=["x"]))
    if click:
        cells = cells.add_params(
            alt.selection_point(name="pick", fields=["position"], on="click", clear="dblclick")
        )
    layers: list[alt.Chart] = [cells]

    if labels:
        layers.append(_cell_text(base, x, y, tooltip, fontSize=10, limit=cell_width - 2))

    # Boxes: template runs in the detail view (purple), the detail range in the overview
    # (a black-and-white dashed "marquee": purple means template tokens only).
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
    for rows, stroke in runs:
        layers.append(
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

    # Streamlit's default autosize "fit" squeezes titles and axes into `height`: set one.
    # Overview: "fit-x", the whole chart follows the container's width (width="stretch"),
    # the plot keeps its `height`. Detail: "pad", the plot is `width` x `height` and the
    # axes, legend and title are added around it (QA: with "fit-x" they had to fit inside
    # `width`, and a range of <= 6 positions left a plot a few pixels wide).
    autosize = (
        alt.AutoSizeParams(type="pad")
        if labels
        else alt.AutoSizeParams(type="fit-x", contains="padding")
    )
    chart = alt.layer(*layers).properties(
        width=width,
        height=height,
        title=_title(result, spec, pos, labels),
        autosize=autosize,
    )
    return _configure(chart)


def _configure(chart: Any) -> Any:
    return (
        chart.configure_view(stroke=None)
        .configure_axis(domain=False, labelFont="DejaVu Sans", titleFont="DejaVu Sans")
        .configure_legend(labelFont="DejaVu Sans", titleFont="DejaVu Sans", titleLimit=300)
        .configure_title(font="DejaVu Sans", subtitleFont="DejaVu Sans")
        .configure_text(font="DejaVu Sans")
    )


def position_table(result: LensResult, position: int) -> pd.DataFrame:
    """Per-layer table at one position: top-k tokens with probabilities, target, entropy, KL.

    Rows run from ``out`` (top) down to ``emb``, like the heatmaps. The tokens come first
    (``layer, top 1, p1, top 2, p2, ...``), then the target's probability and rank, entropy
    and KL: in the app's narrow column the top-k tokens are visible without scrolling (QA:
    behind five numeric columns they were not); the numbers are also on the charts.
    """
    p = int(position)
    if not 0 <= p < result.n_positions:
        raise ValueError(f"position must lie in [0, {result.n_positions}), got {p}")
    data: dict[str, Any] = {"layer": [str(x) for x in result.layer_names]}
    for j in range(result.top_k):
        data[f"top {j + 1}"] = [_shown(result, s, 24) for s in result.top_tokens[:, p, j]]
        data[f"p{j + 1}"] = result.top_probs[:, p, j].astype(float)
    if result.target_prob is not None:
        data[f"p({format_token(str(result.target), 0)})"] = result.target_prob[:, p].astype(float)
        data[f"target rank ({RANK_CONVENTION})"] = display_rank(result.target_rank[:, p])
    data["entropy (nats)"] = result.entropy[:, p].astype(float)
    data["KL(out || layer) (nats)"] = result.kl_to_final[:, p].astype(float)
    return pd.DataFrame(data).iloc[::-1].reset_index(drop=True)


def position_drilldown_chart(
    result: LensResult, position: int, *, panel_width: int = 320
) -> alt.VConcatChart:
    """Per-layer lines at one position: two panels stacked vertically.

    With a target: the target token's probability (and the top-1 probability for reference;
    log scale from :data:`PROB_FLOOR`, the tooltip exact) above, its rank (log scale,
    1 = top) below. Without a target: the top-1 probability and
    the entropy. The panels are stacked (not side by side) so the chart fits a narrow column;
    in Streamlit ``st.altair_chart(..., width="stretch")`` sets each panel to the container's
    width (for exports each panel is ``panel_width`` pixels wide).
    """
    p = int(position)
    if not 0 <= p < result.n_positions:
        raise ValueError(f"position must lie in [0, {result.n_positions}), got {p}")
    layers = [str(x) for x in result.layer_names]
    target_name = f"target {format_token(str(result.target), 16)}"
    rows: list[dict[str, Any]] = []
    for i, layer in enumerate(layers):
        rows.append({"layer": layer, "series": "top-1", "prob": float(result.top_probs[i, p, 0])})
        if result.target_prob is not None:
            rows.append(
                {
                    "layer": layer,
                    "series": target_name,
                    "prob": float(result.target_prob[i, p]),
                }
            )
    for row in rows:  # drawn on a log scale from PROB_FLOOR (log 0 is not drawable)
        row["shown"] = max(row["prob"], PROB_FLOOR) if math.isfinite(row["prob"]) else None
    x = alt.X(
        "layer:O",
        sort=layers,
        title="layer (read-out)",
        axis=alt.Axis(labelAngle=0, labelOverlap=True),
    )
    token = _shown(result, result.tokens[p], 20)
    panel = {"width": int(panel_width), "height": 170}
    prob_chart = (
        alt.Chart(pd.DataFrame(rows))
        .mark_line(point=True)
        .encode(
            x=x,
            # Log scale, as the overview's target probability: a target at 1e-6 in early
            # layers and 0.9 at the end is a flat line at 0 on a linear scale (QA).
            y=alt.Y(
                "shown:Q",
                title="probability (log)",
                scale=alt.Scale(type="log", domain=[PROB_FLOOR, 1], clamp=True),
                axis=alt.Axis(values=[1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1], format=".0e"),
            ),
            color=alt.Color(
                "series:N",
                title=None,
                scale=(
                    alt.Scale(domain=["top-1", target_name], range=["#888888", "#d62728"])
                    if result.target_prob is not None
                    else alt.Scale(domain=["top-1"], range=["#888888"])
                ),
                legend=alt.Legend(orient="top"),
            ),
            tooltip=[
                "layer:N",
                "series:N",
                alt.Tooltip("prob:Q", title="probability", format=PROB_FORMAT),
            ],
        )
        .properties(title="probability", **panel)
    )
    if result.target_prob is not None:
        rank_max = max(int(result.vocab_size), 10)
        rank_ticks = [10**e for e in range(int(math.log10(rank_max)) + 1)]
        second_rows = [
            {"layer": layer, "rank": int(rank)}
            for layer, rank in zip(layers, display_rank(result.target_rank[:, p]), strict=True)
        ]
        second = (
            alt.Chart(pd.DataFrame(second_rows))
            .mark_line(point=alt.OverlayMarkDef(color="#d62728"), color="#d62728")
            .encode(
                x=x,
                y=alt.Y(
                    "rank:Q",
                    title=f"target rank ({RANK_CONVENTION}, log)",
                    scale=alt.Scale(type="log", reverse=True, domain=[1, rank_max]),
                    axis=alt.Axis(values=rank_ticks, format="~s"),
                ),
                tooltip=["layer:N", alt.Tooltip("rank:Q", title=f"rank ({RANK_CONVENTION})")],
            )
            .properties(title="target rank", **panel)
        )
    else:
        lo, hi = METRICS["entropy"].domain(result.vocab_size)
        second_rows = [
            {"layer": layer, "entropy": float(result.entropy[i, p])}
            for i, layer in enumerate(layers)
        ]
        second = (
            alt.Chart(pd.DataFrame(second_rows))
            .mark_line(point=alt.OverlayMarkDef(color="#1f77b4"), color="#1f77b4")
            .encode(
                x=x,
                y=alt.Y("entropy:Q", title="entropy (nats)", scale=alt.Scale(domain=[lo, hi])),
                tooltip=["layer:N", alt.Tooltip("entropy:Q", format=".3f")],
            )
            .properties(title="entropy", **panel)
        )
    # No explicit autosize: Streamlit fits a simple vconcat to the container's width
    # ("fit-x") when it is stretched; elsewhere (exports) Vega-Lite pads around the panels.
    chart = alt.vconcat(prob_chart, second, spacing=12).properties(
        title=alt.TitleParams(f"Position {p} ({token}) across layers", anchor="start", fontSize=14),
    )
    return _configure(chart)


# --- export -------------------------------------------------------------------------------

_FORMATS = ("png", "svg", "html", "json")


def _vl_version() -> str | None:
    import vl_convert as vlc

    major_minor = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    return major_minor if major_minor in vlc.get_vegalite_versions() else None


def chart_spec(chart: Any) -> dict[str, Any]:
    """The chart's Vega-Lite spec as a plain dict, its data inlined under ``datasets``.

    Touches no global Altair state (data transformers, row limits): each DataFrame is
    swapped for a named data reference on a copy of the chart, and the rows are added as
    JSON-safe records (NaN/inf as null) after validation, which stays fast for large grids.
    """
    chart = chart.copy(deep=True)
    datasets: dict[str, list[dict[str, Any]]] = {}

    def swap(obj: Any) -> None:
        data = obj._get("data") if hasattr(obj, "_get") else alt.Undefined
        if isinstance(data, pd.DataFrame):
            name = f"lenskit-data-{len(datasets)}"
            datasets[name] = _records(data)
            obj.data = alt.NamedData(name=name)
        for key in ("layer", "hconcat", "vconcat", "concat"):
            children = obj._get(key) if hasattr(obj, "_get") else alt.Undefined
            if isinstance(children, list):
                for child in children:
                    swap(child)

    swap(chart)
    spec = chart.to_dict()
    spec.setdefault("datasets", {}).update(datasets)
    return spec


def chart_bytes(chart: Any, fmt: str, *, scale: float = 2.0) -> bytes:
    """Render a chart to bytes, offline.

    Args:
        chart: an Altair chart.
        fmt: "png" (rendered at ``scale`` x), "svg", "html" (standalone: Vega, Vega-Lite and
            vega-embed are inlined, so it opens without network access) or "json" (the
            Vega-Lite spec).
        scale: PNG pixel scale.
    """
    import vl_convert as vlc

    fmt = fmt.lower().lstrip(".")
    if fmt not in _FORMATS:
        raise ValueError(f"unknown chart format {fmt!r}; known: {_FORMATS}")
    spec = chart_spec(chart)
    if fmt == "json":
        return json.dumps(spec, indent=1).encode()
    version = _vl_version()
    if fmt == "png":
        return bytes(vlc.vegalite_to_png(spec, vl_version=version, scale=scale))
    if fmt == "svg":
        return vlc.vegalite_to_svg(spec, vl_version=version).encode()
    return vlc.vegalite_to_html(spec, vl_version=version, bundle=True).encode()


def save_chart(chart: Any, path: str | Path, *, scale: float = 2.0) -> Path:
    """Write a chart to ``path``; the format comes from the suffix (.png, .svg, .html, .json).

    PNG and SVG are rendered offline by vl-convert; HTML is standalone (all JavaScript
    inlined, no CDN). Returns the path.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in _FORMATS:
        raise ValueError(f"cannot tell the chart format from {path.name!r}; use one of {_FORMATS}")
    data = chart_bytes(chart, fmt, scale=scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _iter_layers(spec: dict[str, Any]) -> Iterable[dict[str, Any]]:  # used by tests
    yield spec
    for key in ("layer", "hconcat", "vconcat", "concat"):
        for child in spec.get(key, []) or []:
            yield from _iter_layers(child)


# --- generation & interventions -------------------------------------------------------------
#
# Builders for the app's second tab (and the CLI): the intervention sweep's KL heatmap
# (swept blocks x generated tokens), the logit lens restricted to the generated tokens, and
# the layer x layer KL matrix at one position. Same conventions as above: the first layer at
# the bottom, fixed colour domains (values outside are clamped), data as DataFrames.

#: Colour domain of :func:`sweep_heatmap`: 0 .. 2 nats, fixed so that two sweeps (prompts,
#: interventions, models) compare by colour. Two nats is where a next-token distribution has
#: clearly moved (the seed figure's values run 0.2 .. 1.4); larger KLs are drawn in the
#: darkest red (the scale is clamped) and the tooltip gives the exact value.
SWEEP_KL_MAX = 2.0
#: Log colour scale of :func:`sweep_heatmap` (``scale="log"``): 0.001 .. 10 nats, fixed and
#: clamped, for sweeps whose effects span orders of magnitude (real models: most cells
#: 0.001 .. 0.1 nats, a few above 5); KL below 0.001 (including 0) gets the lightest colour.
SWEEP_LOG_DOMAIN = (1e-3, 10.0)
#: Colour scheme of :func:`sweep_heatmap`: light yellow = no effect, dark red = large KL.
SWEEP_SCHEME = "yelloworangered"
#: Colour domain upper end of :func:`layer_pairwise_heatmap` when no vocabulary size is given
#: (with one, ln V: the domain of the lens view's KL(out || layer)).
PAIRWISE_KL_MAX = 10.0

__all__ += [
    "PAIRWISE_KL_MAX",
    "SWEEP_KL_MAX",
    "SWEEP_LOG_DOMAIN",
    "SWEEP_SCHEME",
    "band_layers",
    "generation_lens_heatmap",
    "gen_labels",
    "layer_pairwise_heatmap",
    "sweep_heatmap",
]


def band_layers(n_blocks: int) -> list[int]:
    """The quick layer pick: first block, a middle band and a late block.

    Blocks ``0``, ``floor(L/2) .. floor(0.7 L)`` and ``floor(0.9 L)`` (0-based, duplicates
    dropped): for the 30-block default model that is 0, 15..21, 27, the seed figure's rows;
    for L = 3 it is 0, 1, 2.
    """
    n = int(n_blocks)
    if n < 1:
        return []
    picked = {0, *range(n // 2, int(0.7 * n) + 1), int(0.9 * n)}
    return sorted(b for b in picked if 0 <= b < n)


def gen_labels(
    tokens: Sequence[str], max_len: int = 10, *, byte_level: bool | None = None
) -> list[str]:
    """Column labels ``"Gen0 \u00b7 \u2423The"``: the index (unique) and the token (readable;
    ``tokens`` are vocabulary strings, ``byte_level`` as in :func:`format_token`)."""
    return [
        f"Gen{j} \u00b7 {format_token(str(t), max_len, byte_level=byte_level)}"
        for j, t in enumerate(tokens)
    ]


def _gen_axis(n_cols: int, cell_width: int) -> alt.Axis:
    return alt.Axis(
        labelAngle=0 if cell_width >= 80 else -40 if cell_width >= 24 else -90,
        labelAlign="center" if cell_width >= 80 else "right",
        labelFontSize=11 if n_cols <= 24 else 9,
        labelLimit=120,
        labelOverlap=False,
        ticks=False,
    )


def _gen_x(labels: list[str], title: str, cell_width: int) -> alt.X:
    """The x encoding of the generated-token columns (``gen_label``, in generation order)."""
    return alt.X(
        "gen_label:N",
        sort=labels,
        scale=alt.Scale(domain=labels),
        title=title,
        axis=_gen_axis(len(labels), cell_width),
    )


def _sweep_frame(result: Any, lo: float, hi: float, log: bool, max_label: int) -> pd.DataFrame:
    n_l, g = result.kl.shape
    li, gj = np.meshgrid(np.arange(n_l), np.arange(g), indexing="ij")
    li, gj = li.ravel(), gj.ravel()
    labels = gen_labels(result.generated_tokens, byte_level=result.byte_level)
    kl = result.kl.ravel().astype(np.float64)
    top_ids = result.top_ids_intervened.ravel()
    changed = top_ids != result.generated_ids[gj]
    top = [_shown(result, s, 16) for s in result.top_tokens_intervened.ravel()]
    colour = np.clip(np.nan_to_num(kl, nan=lo, posinf=hi), lo, hi)
    if log:
        norm = (np.log(colour) - math.log(lo)) / (math.log(hi) - math.log(lo))
    else:
        norm = (colour - lo) / (hi - lo)
    if max_label >= 3:
        text = [
            _shown(result, s, max_label) if c else ""
            for s, c in zip(result.top_tokens_intervened.ravel(), changed, strict=True)
        ]
    else:
        text = ["\u2022" if c else "" for c in changed]
    return pd.DataFrame(
        {
            "layer": result.layers[li].astype(int),
            "gen": gj,
            "gen_label": [labels[j] for j in gj],
            "generated": [_shown(result, result.generated_tokens[j], 16) for j in gj],
            "kl": kl,
            # what is coloured: KL itself on the linear scale; on the log scale the floor
            # stands in for 0 (log 0 is not drawable)
            "colour": np.where(np.isnan(kl), np.nan, np.maximum(kl, lo)) if log else kl,
            "top_intervened": top,
            "changed": np.where(changed, "yes", "no"),
            "prob_clean": result.generated_prob_clean[gj].astype(np.float64),
            "prob_intervened": result.generated_prob_intervened.ravel().astype(np.float64),
            "label": text,
            "dark": norm > 0.6,  # dark orange / red cells: white text
        }
    )


def _positions_phrase(result: Any) -> str:
    n = int(result.positions.size)
    if n == 0:
        return "no prompt positions"
    if n == result.n_prompt:
        return f"all {n} prompt positions"
    shown = ", ".join(str(int(p)) for p in result.positions[:8])
    more = ", \u2026" if n > 8 else ""
    return f"{n} prompt position{'s' if n != 1 else ''} ({shown}{more})"


def sweep_heatmap(
    result: Any,
    *,
    scale: str = "linear",
    kl_max: float | None = None,
    cell_width: int | None = None,
    cell_height: int | None = None,
) -> alt.LayerChart:
    """KL heatmap of an intervention sweep: swept blocks (y) x generated tokens (x).

    Cell ``(l, Gen j)`` is KL(p_clean || p_intervened) in nats of the next-token distribution
    that produced Gen j when block ``l`` was intervened on (see
    :func:`lenskit.interventions.intervention_sweep`). Block 0 is at the bottom (like ``emb``
    in the lens view), the columns are labelled ``"Gen0 \u00b7 \u2423The"``. Colour: scheme
    :data:`SWEEP_SCHEME` on a FIXED, clamped domain (larger values get the darkest red): by
    default linear ``0 .. 2`` nats (:data:`SWEEP_KL_MAX`; the seed figure's range), or with
    ``scale="log"`` logarithmic ``0.001 .. 10`` nats (:data:`SWEEP_LOG_DOMAIN`). Cells whose top-1
    token changed under the intervention show the new token (a dot when the cells are narrow).
    The tooltip gives the block, the generated token, the exact KL, the intervened top-1 token,
    whether it changed and the probability of the generated token clean vs intervened.

    Args:
        result: a :class:`~lenskit.interventions.SweepResult`.
        scale: "linear" (default) or "log".
        kl_max: upper end of the colour domain in nats (default: 2 linear, 10 log).
        cell_width, cell_height: pixels per cell (defaults depend on G and nL).
    """
    if scale not in ("linear", "log"):
        raise ValueError(f"scale must be 'linear' or 'log', got {scale!r}")
    log = scale == "log"
    lo = SWEEP_LOG_DOMAIN[0] if log else 0.0
    if kl_max is None:
        kl_max = SWEEP_LOG_DOMAIN[1] if log else SWEEP_KL_MAX
    kl_max = float(kl_max)
    if not kl_max > lo or not math.isfinite(kl_max):
        raise ValueError(f"kl_max must be a number of nats above {lo:g}, got {kl_max!r}")
    n_l, g = result.kl.shape
    if cell_width is None:
        cell_width = max(12, min(86, GEN_CELLS_BUDGET // max(g, 1)))
    if cell_height is None:
        cell_height = max(8, min(26, 620 // max(n_l, 1)))
    max_label = (cell_width - 6) // 7 if cell_height >= 14 else 0
    frame = _sweep_frame(result, lo, kl_max, log, max_label)
    labels = gen_labels(result.generated_tokens, byte_level=result.byte_level)
    layer_order = [int(x) for x in result.layers[::-1]]  # block 0 at the bottom
    x = _gen_x(labels, "generated token (Gen j = the j-th answer token)", cell_width)
    y_axis: dict[str, Any] = {"labelFontSize": 10, "ticks": False}
    if cell_height < 12 and n_l > 16:  # thin rows: label every 5th block (and the ends)
        y_axis["values"] = sorted(
            {layer_order[0], layer_order[-1], *(b for b in layer_order if b % 5 == 0)}
        )
    y = alt.Y(
        "layer:O",
        sort=layer_order,
        scale=alt.Scale(domain=layer_order),
        title="intervened block",
        axis=alt.Axis(**y_axis),
    )
    height = max(cell_height * max(n_l, 1), MIN_PLOT_HEIGHT)
    colour = alt.Color(
        "colour:Q",
        scale=alt.Scale(
            type="log" if log else "linear", domain=[lo, kl_max], scheme=SWEEP_SCHEME, clamp=True
        ),
        title=f"KL(clean \u2016 intervened) (nats{', log scale' if log else ''})",
        legend=_colour_legend(
            height,
            **(
                {"values": [v for v in (1e-3, 1e-2, 0.1, 1.0, 10.0) if lo <= v <= kl_max]}
                if log
                else {}
            ),
        ),
    )
    tooltip = [
        alt.Tooltip("layer:O", title="intervened block"),
        alt.Tooltip("gen_label:N", title="generated"),
        alt.Tooltip("kl:Q", title="KL(clean || intervened) (nats)", format=".4f"),
        alt.Tooltip("top_intervened:N", title="top-1 under intervention"),
        alt.Tooltip("changed:N", title="top-1 changed"),
        alt.Tooltip("prob_clean:Q", title="p(generated), clean", format=PROB_FORMAT),
        alt.Tooltip("prob_intervened:Q", title="p(generated), intervened", format=PROB_FORMAT),
    ]
    base = alt.Chart(frame)
    cells = base.mark_rect(stroke="white", strokeWidth=0.5).encode(
        x=x, y=y, color=colour, tooltip=tooltip
    )
    layers: list[Any] = [cells]
    if n_l and g and cell_height >= 10:
        layers.append(
            _cell_text(
                base,
                x,
                y,
                tooltip,
                fontSize=10 if max_label else 12,
                limit=max(cell_width - 2, 1),
            )
        )
    n_blocks = result.num_blocks or "?"
    clamp_note = ""
    finite = result.kl[np.isfinite(result.kl)]
    if finite.size and float(finite.max()) > kl_max:
        clamp_note = f" \u00b7 colour clamped at {kl_max:g} nats (max {float(finite.max()):.2f})"
    chart = alt.layer(*layers).properties(
        width=max(cell_width * g, 120),
        height=height,
        title=_chart_title(
            f"Intervention sweep: KL(clean \u2016 intervened), {result.intervention}",
            f"{result.model_name or 'model'} \u00b7 {n_l} of {n_blocks} blocks \u00b7 "
            f"{result.intervention} at {_positions_phrase(result)}{clamp_note} \u00b7 "
            "text: the new top-1 where it changed",
        ),
        autosize=alt.AutoSizeParams(type="pad"),
    )
    return _configure(chart)


def generation_lens_heatmap(
    result: LensResult,
    n_prompt: int,
    metric: str = "entropy",
    *,
    cell_width: int | None = None,
    cell_height: int | None = None,
) -> alt.LayerChart:
    """Logit lens on the generated tokens: read-out rows (y) x Gen0..Gen{G-1} (x).

    ``result`` covers prompt + generated tokens (:func:`lenskit.interventions.lens_on_generation`);
    column "Gen j" is position ``n_prompt - 1 + j``, the position whose next-token distribution
    produced Gen j (so row ``out``'s top-1 is Gen j), matching the sweep's columns. Rows as in
    :func:`lens_heatmap` (``emb`` at the bottom, ``out`` on top), colours from :data:`METRICS`
    on their fixed domains; each cell shows its top-1 token.

    Args:
        result: a LensResult over T + G positions.
        n_prompt: T, the number of prompt tokens.
        metric: "entropy", "kl_to_final" or "top1_prob" (no target here).
        cell_width, cell_height: pixels per cell.
    """
    spec = _metric(metric)
    n_prompt = int(n_prompt)
    t = result.n_positions
    if not 1 <= n_prompt <= t:
        raise ValueError(f"n_prompt must lie in [1, {t}], got {n_prompt}")
    g = t - n_prompt
    pos = np.arange(n_prompt - 1, n_prompt - 1 + g, dtype=np.int64)
    frame = _cell_frame(result, spec, pos, detail=True)
    gen_tokens = [str(result.tokens[n_prompt + j]) for j in range(g)]
    labels = gen_labels(gen_tokens, byte_level=result.byte_level)
    frame["gen_label"] = [labels[int(p) - (n_prompt - 1)] for p in frame["position"]]
    r = result.n_rows
    if cell_width is None:
        cell_width = max(12, min(70, GEN_CELLS_BUDGET // max(g, 1)))
    if cell_height is None:
        cell_height = max(8, min(18, 620 // max(r, 1)))
    lo, hi = spec.domain(result.vocab_size)
    layer_order = [str(x) for x in result.layer_names[::-1]]
    x = _gen_x(labels, "generated token (column Gen j: the position that predicts it)", cell_width)
    y_axis: dict[str, Any] = {"labelFontSize": 10, "ticks": False}
    if cell_height < 12 and r > 16:
        y_axis["values"] = ["emb", "out", *(str(i) for i in range(5, r - 1, 5))]
    y = alt.Y("layer:N", sort=layer_order, title="layer (read-out)", axis=alt.Axis(**y_axis))
    height = max(cell_height * r, MIN_PLOT_HEIGHT)
    colour = alt.Color(
        "colour:Q",
        scale=alt.Scale(
            type=spec.scale_type,
            domain=[lo, hi],
            scheme=spec.scheme,
            reverse=spec.reverse,
            clamp=True,
        ),
        title=spec.label,
        legend=_colour_legend(height),
    )
    tooltip: list[Any] = [
        alt.Tooltip("gen_label:N", title="predicts"),
        alt.Tooltip("token:N", title="input token"),
        alt.Tooltip("layer:N", title="layer"),
        alt.Tooltip("entropy:Q", title="entropy (nats)", format=".3f"),
        alt.Tooltip("kl_to_final:Q", title="KL(out || layer) (nats)", format=".3f"),
        *_top_k_tooltip(result),
    ]
    base = alt.Chart(frame)
    layers: list[Any] = [
        base.mark_rect(stroke="white", strokeWidth=0.5).encode(
            x=x, y=y, color=colour, tooltip=tooltip
        )
    ]
    if cell_width >= 30 and cell_height >= 12:
        layers.append(_cell_text(base, x, y, tooltip, fontSize=10, limit=cell_width - 2))
    chart = alt.layer(*layers).properties(
        width=max(cell_width * g, 120),
        height=height,
        title=_chart_title(
            f"Logit lens on the generated tokens: {spec.label}",
            f"{result.model_name or 'model'} \u00b7 {g} generated tokens \u00b7 "
            f"{r} read-outs (emb \u2192 out) \u00b7 text: top-1 token",
        ),
        autosize=alt.AutoSizeParams(type="pad"),
    )
    return _configure(chart)


def layer_pairwise_heatmap(
    layer_names: Sequence[str],
    kl: Any,
    *,
    title: str | None = None,
    subtitle: str | None = None,
    vocab_size: int | None = None,
    kl_max: float | None = None,
) -> alt.Chart:
    """Square heatmap of ``kl[i, j]`` = KL(p_row_i || p_row_j) between read-out rows, in nats.

    Rows (``p``, y) run from ``emb`` at the bottom to ``out`` on top; columns (``q``, x) from
    ``emb`` on the left. Colour: the lens view's KL colours (blue = close, red = far) on a
    FIXED, clamped domain ``0 .. kl_max``: by default ln V when ``vocab_size`` is given (the
    domain of KL(out || layer) in the lens view, whose values are this matrix's row ``out``),
    else :data:`PAIRWISE_KL_MAX` nats.

    Args:
        layer_names: ``[R]`` row names (``"emb"``, ``"1"`` .. ``"out"``).
        kl: ``[R, R]`` KL matrix (:func:`lenskit.interventions.layer_pairwise_kl`).
        title, subtitle: chart title (default: "Layer x layer KL") and subtitle.
        vocab_size: V, to set the domain to ``0 .. ln V``.
        kl_max: explicit upper end of the domain (wins over ``vocab_size``).
    """
    names = [str(n) for n in layer_names]
    arr = np.asarray(kl, dtype=np.float64)
    r = len(names)
    if arr.shape != (r, r):
        raise ValueError(f"kl must have shape ({r}, {r}) for {r} layer names, got {arr.shape}")
    if len(set(names)) != r:
        raise ValueError(f"layer names must be unique, got {names}")
    if kl_max is None:
        kl_max = math.log(max(int(vocab_size), 2)) if vocab_size else PAIRWISE_KL_MAX
    kl_max = float(kl_max)
    if not kl_max > 0 or not math.isfinite(kl_max):
        raise ValueError(f"kl_max must be a positive number of nats, got {kl_max!r}")
    ii, jj = np.meshgrid(np.arange(r), np.arange(r), indexing="ij")
    flat = arr.ravel()
    frame = pd.DataFrame(
        {
            "p": [names[i] for i in ii.ravel()],
            "q": [names[j] for j in jj.ravel()],
            "kl": flat,
        }
    )
    cell = max(6, min(24, 620 // max(r, 1)))
    axis: dict[str, Any] = {"labelFontSize": 10 if cell >= 12 else 9, "ticks": False}
    if cell < 12 and r > 16:
        axis["values"] = ["emb", "out", *(str(i) for i in range(5, r - 1, 5))]
    x = alt.X(
        "q:N",
        sort=names,
        scale=alt.Scale(domain=names),
        title="layer j (q)",
        axis=alt.Axis(labelAngle=0 if cell >= 20 else -90, **axis),
    )
    y = alt.Y(
        "p:N",
        sort=names[::-1],
        scale=alt.Scale(domain=names[::-1]),
        title="layer i (p)",
        axis=alt.Axis(**axis),
    )
    colour = alt.Color(
        "kl:Q",
        scale=alt.Scale(domain=[0.0, kl_max], scheme="redblue", reverse=True, clamp=True),
        title="KL(p_i \u2016 p_j) (nats)",
        legend=_colour_legend(cell * r),
    )
    tooltip = [
        alt.Tooltip("p:N", title="layer i (p)"),
        alt.Tooltip("q:N", title="layer j (q)"),
        alt.Tooltip("kl:Q", title="KL(p_i || p_j) (nats)", format=".4f"),
    ]
    chart = (
        alt.Chart(frame)
        .mark_rect()
        .encode(x=x, y=y, color=colour, tooltip=tooltip)
        .properties(
            width=cell * r,
            height=cell * r,
            title=_chart_title(title or "Layer \u00d7 layer KL(p_i \u2016 p_j)", subtitle or ""),
            autosize=alt.AutoSizeParams(type="pad"),
        )
    )
    return _configure(chart)
