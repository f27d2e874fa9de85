"""One position across the read-out rows: the drill-down table and its line chart.

:func:`position_table` lists, per row, the top-k tokens with their probabilities, the target's
probability and rank, entropy and KL. :func:`position_drilldown_chart` draws the target's (or
the top-1 token's) probability on a log scale and the target's rank (or the entropy) per row,
stacked so that it fits a narrow column.
"""

from __future__ import annotations

import math
from typing import Any

import altair as alt
import pandas as pd

from lenskit.charts.marks import configure
from lenskit.charts.metrics import METRICS
from lenskit.charts.theme import (
    PROB_FLOOR,
    PROB_FORMAT,
    RANK_CONVENTION,
    display_rank,
    format_bound,
    shown,
)
from lenskit.errors import InputError
from lenskit.results import LensResult
from lenskit.text.tokens import format_token

__all__ = ["DRILL_LABEL_ALL", "DRILL_LABEL_GAP", "position_drilldown_chart", "position_table"]

#: Most read-out rows whose every x label the drill-down draws; more rows are labelled at
#: ``emb``, every 5th block and ``out`` (a 320 px panel leaves ~24 px per row at 13 rows).
DRILL_LABEL_ALL = 13
#: Least pixels between two drawn x labels of the drill-down; closer labels are dropped, so
#: "emb" and "1" never run together into "emb1".
DRILL_LABEL_GAP = 6
#: The probability panel's y ticks (log scale from PROB_FLOOR).
_PROB_TICKS = [1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1]
_TARGET_COLOUR = "#d62728"
_TOP1_COLOUR = "#888888"


def _check_position(result: LensResult, position: int) -> int:
    p = int(position)
    if not 0 <= p < result.n_positions:
        raise InputError(f"position must lie in [0, {result.n_positions}), got {p}")
    return p


def position_table(result: LensResult, position: int) -> pd.DataFrame:
    """Per-layer table at one position: top-k tokens with probabilities, target, entropy, KL.

    Rows run from ``out`` (top) down to ``emb``, like the heatmaps. The tokens come first
    (``layer, top 1, p1, top 2, p2, ...``), then the target's probability and rank, entropy
    and KL, so that in a narrow column the top-k tokens are visible without scrolling; the
    numbers are also on the charts.
    """
    p = _check_position(result, position)
    data: dict[str, Any] = {"layer": [str(x) for x in result.layer_names]}
    for j in range(result.top_k):
        data[f"top {j + 1}"] = [shown(result, s, 24) for s in result.top_tokens[:, p, j]]
        data[f"p{j + 1}"] = result.top_probs[:, p, j].astype(float)
    if result.target_prob is not None:
        data[f"p({format_token(str(result.target), 0)})"] = result.target_prob[:, p].astype(float)
        data[f"target rank ({RANK_CONVENTION})"] = display_rank(result.target_rank[:, p])
    data["entropy (nats)"] = result.entropy[:, p].astype(float)
    data["KL(out || layer) (nats)"] = result.kl_to_final[:, p].astype(float)
    return pd.DataFrame(data).iloc[::-1].reset_index(drop=True)


def drill_label_values(layers: list[str]) -> list[str]:
    """The rows the drill-down labels on x: all of them up to :data:`DRILL_LABEL_ALL`, else
    ``emb``, every 5th block (10th past 60 rows) and ``out``, never two neighbouring rows."""
    if len(layers) <= DRILL_LABEL_ALL:
        return list(layers)
    step = 5 if len(layers) <= 60 else 10
    last = len(layers) - 1  # "out"
    inner = [layers[i] for i in range(step, last - 1, step)]  # not next to "out"
    return [layers[0], *inner, layers[last]]


def _drill_x(layers: list[str]) -> alt.X:
    """The rows on x: horizontal labels, thinned and spaced so that they stay apart."""
    return alt.X(
        "layer:O",
        sort=layers,
        title="layer (read-out)",
        axis=alt.Axis(
            values=drill_label_values(layers),
            labelAngle=0,
            labelOverlap=True,
            labelSeparation=DRILL_LABEL_GAP,
        ),
    )


def _prob_rows(result: LensResult, p: int, layers: list[str], target_name: str) -> pd.DataFrame:
    """Probability per row and series; ``shown`` is drawn (log scale from PROB_FLOOR: log 0 is
    not drawable) and ``clipped`` marks the points below the floor."""
    rows: list[dict[str, Any]] = []
    for i, layer in enumerate(layers):
        rows.append({"layer": layer, "series": "top-1", "prob": float(result.top_probs[i, p, 0])})
        if result.target_prob is not None:
            prob = float(result.target_prob[i, p])
            rows.append({"layer": layer, "series": target_name, "prob": prob})
    for row in rows:
        finite = math.isfinite(row["prob"])
        row["shown"] = max(row["prob"], PROB_FLOOR) if finite else None
        row["clipped"] = finite and row["prob"] < PROB_FLOOR
        row["scale_note"] = (
            f"< {format_bound(PROB_FLOOR)} (below the axis, drawn at {format_bound(PROB_FLOOR)})"
            if row["clipped"]
            else "in range"
        )
    return pd.DataFrame(rows)


def _prob_panel(result: LensResult, p: int, layers: list[str], panel: dict[str, int]) -> alt.Chart:
    """Top-1 (grey) and target (red) probability per row, log scale from PROB_FLOOR; points
    below the floor are drawn on it as downward triangles and said so in the axis title and
    tooltip."""
    target_name = f"target {format_token(str(result.target), 16)}"
    frame = _prob_rows(result, p, layers, target_name)
    clipped = bool(frame["clipped"].any())
    floor = format_bound(PROB_FLOOR)
    title = f"probability (log; \u25bc below {floor}, drawn at {floor})" if clipped else None
    series = ["top-1", target_name] if result.target_prob is not None else ["top-1"]
    tooltip = [
        "layer:N",
        "series:N",
        alt.Tooltip("prob:Q", title="probability", format=PROB_FORMAT),
        *([alt.Tooltip("scale_note:N", title="y scale")] if clipped else []),
    ]
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=_drill_x(layers),
            # Log scale, as the overview's target probability: a target at 1e-6 in early
            # layers and 0.9 at the end would be a flat line at 0 on a linear scale.
            y=alt.Y(
                "shown:Q",
                title=title or "probability (log)",
                scale=alt.Scale(type="log", domain=[PROB_FLOOR, 1], clamp=True),
                axis=alt.Axis(values=_PROB_TICKS, format=".0e"),
            ),
            color=alt.Color(
                "series:N",
                title=None,
                scale=alt.Scale(domain=series, range=[_TOP1_COLOUR, _TARGET_COLOUR][: len(series)]),
                legend=alt.Legend(orient="top"),
            ),
            # the line ignores the shape; its points take it
            shape=alt.condition("datum.clipped", alt.value("triangle-down"), alt.value("circle")),
            tooltip=tooltip,
        )
        .properties(title="probability", **panel)
    )


def _rank_panel(result: LensResult, p: int, layers: list[str], panel: dict[str, int]) -> alt.Chart:
    """The target's rank per row (log scale, 1 = top at the top)."""
    rank_max = max(int(result.vocab_size), 10)
    rank_ticks = [10**e for e in range(int(math.log10(rank_max)) + 1)]
    ranks = display_rank(result.target_rank[:, p])
    frame = pd.DataFrame(
        [{"layer": layer, "rank": int(rank)} for layer, rank in zip(layers, ranks, strict=True)]
    )
    return (
        alt.Chart(frame)
        .mark_line(point=alt.OverlayMarkDef(color=_TARGET_COLOUR), color=_TARGET_COLOUR)
        .encode(
            x=_drill_x(layers),
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


def _entropy_panel(
    result: LensResult, p: int, layers: list[str], panel: dict[str, int]
) -> alt.Chart:
    """Entropy per row on its fixed domain 0 .. ln V (without a target)."""
    lo, hi = METRICS["entropy"].domain(result.vocab_size)
    frame = pd.DataFrame(
        [{"layer": layer, "entropy": float(result.entropy[i, p])} for i, layer in enumerate(layers)]
    )
    return (
        alt.Chart(frame)
        .mark_line(point=alt.OverlayMarkDef(color="#1f77b4"), color="#1f77b4")
        .encode(
            x=_drill_x(layers),
            y=alt.Y("entropy:Q", title="entropy (nats)", scale=alt.Scale(domain=[lo, hi])),
            tooltip=["layer:N", alt.Tooltip("entropy:Q", format=".3f")],
        )
        .properties(title="entropy", **panel)
    )


def position_drilldown_chart(
    result: LensResult, position: int, *, panel_width: int = 320
) -> alt.VConcatChart:
    """Per-layer lines at one position: two panels stacked vertically.

    With a target: the target token's probability (and the top-1 probability for reference;
    log scale from :data:`~lenskit.charts.theme.PROB_FLOOR`, points below it drawn on it as
    triangles, the tooltip exact) above, its rank (log scale, 1 = top) below. Without a
    target: the top-1 probability and the entropy. The panels are stacked (not side by side)
    so the chart fits a narrow column; in Streamlit ``st.altair_chart(..., width="stretch")``
    sets each panel to the container's width (for exports each panel is ``panel_width``
    pixels wide). The x labels are thinned and spaced (:data:`DRILL_LABEL_GAP`) so that
    neighbouring row names never run together.
    """
    p = _check_position(result, position)
    layers = [str(x) for x in result.layer_names]
    panel = {"width": int(panel_width), "height": 170}
    second = _rank_panel if result.target_prob is not None else _entropy_panel
    token = shown(result, result.tokens[p], 20)
    # No explicit autosize: Streamlit fits a simple vconcat to the container's width
    # ("fit-x") when it is stretched; elsewhere (exports) Vega-Lite pads around the panels.
    chart = alt.vconcat(
        _prob_panel(result, p, layers, panel), second(result, p, layers, panel), spacing=12
    ).properties(
        title=alt.TitleParams(f"Position {p} ({token}) across layers", anchor="start", fontSize=14),
    )
    return configure(chart)
