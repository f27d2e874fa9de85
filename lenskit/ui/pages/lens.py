"""The logit-lens page: overview heatmap with a brush, labelled detail view, per-position
drill-down, exports; with a tuned lens, its fidelity next to the logit lens's.

The views below the colour selector form one fragment: brushing the overview, moving the
detail range, clicking a cell or picking a position reruns them alone, not the whole page.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from lenskit import charts
from lenskit.errors import InputError
from lenskit.results import LensResult
from lenskit.ui import lenses
from lenskit.ui.downloads import chart_downloads, data_downloads
from lenskit.ui.lens_panel import fidelity_panel
from lenskit.ui.state import Keys, LensChoice, app_state
from lenskit.ui.text import has_error, md_escape, position_label, show_messages, show_prompt
from lenskit.ui.widgets import chart_key, clear_selection, position_select

__all__ = ["render", "summary", "table_columns"]

OVERVIEW, DETAIL = "overview_chart", "detail_chart"
#: Drill-down table column widths (px): the default top-5 table (15 columns) takes
#: TABLE_PX, which fits the main column of a 1600 px window with the sidebar open (~1140 px).
LAYER_PX, TOKEN_PX, PROB_PX, NUMBER_PX = 56, 88, 70, 60
TABLE_PX = LAYER_PX + 5 * TOKEN_PX + 6 * PROB_PX + 3 * NUMBER_PX


def summary(result: LensResult, lens: LensChoice | None = None) -> str:
    """The caption above the charts: model, lens, tokens, read-out rows, vocabulary."""
    inner = [str(x) for x in result.layer_names[1:-1]]
    blocks = [x for x in inner if x.isdigit()]
    parts = ["emb", *([charts.describe_range(map(int, blocks))] if blocks else [])]
    if len(inner) > len(blocks):
        parts.append(f"{len(inner) - len(blocks)} after attention (i.attn)")
    rows = ", ".join([*parts, "out"])
    t = result.n_positions
    chat = "chat template" if result.chat else "raw text"
    named = lenses.describe(lens) if lens is not None else f"{result.lens} lens"
    return (
        f"Model: {md_escape(result.model_name or '?')} \u00b7 {md_escape(named)} \u00b7 "
        f"{t} token{'s' if t != 1 else ''} ({chat}) \u00b7 {result.n_rows} read-outs ({rows}) "
        f"\u00b7 V = {result.vocab_size}"
    )


def _metric(result: LensResult) -> str:
    """The "Colour by" choice; a metric this result lacks falls back to the first one."""
    names = charts.metric_names()
    metric = st.radio(
        "Colour by",
        names,
        key=Keys.METRIC,
        horizontal=True,
        persist_state="session",
        format_func=lambda k: charts.METRICS[k].label,
    )
    try:
        charts.metric_values(result, metric)
    except InputError as exc:
        st.warning(
            f"{md_escape(str(exc))}: set a target token in the sidebar and run again. "
            f"Showing {charts.METRICS[names[0]].title.lower()}."
        )
        metric = names[0]
    return metric


def _on_brush() -> None:
    """Brushing the overview sets the detail range (the slider's state)."""
    event = st.session_state.get(chart_key(OVERVIEW)) or {}
    positions = charts.selected_positions(event.get("selection", {}).get("brush", {}))
    if positions:
        st.session_state[Keys.DETAIL_RANGE] = (positions[0], positions[-1])


def _on_pick() -> None:
    """Clicking a cell of the detail view drills down to its position."""
    event = st.session_state.get(chart_key(DETAIL)) or {}
    positions = charts.selected_positions(event.get("selection", {}).get("pick", []))
    if positions:
        st.session_state[Keys.DRILL_POS] = positions[0]


def _detail_range(result: LensResult) -> tuple[int, int, int]:
    """``(lo, hi, shown_hi)``: the selected range, clamped to the prompt, and its shown end
    (the detail view shows at most DETAIL_MAX_POSITIONS positions)."""
    t = result.n_positions
    lo, hi = st.session_state.get(Keys.DETAIL_RANGE) or charts.default_detail_range(result)
    lo, hi = sorted((max(0, min(int(lo), t - 1)), max(0, min(int(hi), t - 1))))
    st.session_state[Keys.DETAIL_RANGE] = (lo, hi)
    return lo, hi, min(hi, lo + charts.DETAIL_MAX_POSITIONS - 1)


def _overview(result: LensResult, metric: str) -> tuple[Any, Any]:
    """The overview with its brush and the detail range slider; returns the overview chart
    and the detail range ``(lo, shown_hi)``."""
    lo, hi, shown_hi = _detail_range(result)
    st.subheader("Overview")
    chart = charts.lens_heatmap(result, metric, labels=False, brush=True, highlight=(lo, shown_hi))
    st.altair_chart(
        chart,
        key=chart_key(OVERVIEW),
        on_select=_on_brush,
        selection_mode="brush",
        theme=None,
        width="stretch",
    )
    if result.n_positions > 1:
        st.slider(
            "Positions in the detail view (or drag across the overview)",
            min_value=0,
            max_value=result.n_positions - 1,
            key=Keys.DETAIL_RANGE,
            persist_state="session",
            on_change=clear_selection,
            args=(OVERVIEW,),
        )
    if hi > shown_hi:
        st.info(
            f"The detail view shows at most {charts.DETAIL_MAX_POSITIONS} positions: showing "
            f"{lo}\u2013{shown_hi} of the selected {lo}\u2013{hi}. Narrow the selection to see "
            "the rest."
        )
    return chart, (lo, shown_hi)


def _detail(result: LensResult, metric: str, lo: int, hi: int) -> Any:
    st.subheader("Detail")
    st.caption(
        "Each cell: the layer's top-1 token (\u2423 = space, \u21b5 = newline, \u21e5 = tab, "
        "\u237d = other space, `<F0 9F>` = bytes of a token that holds only part of a "
        "character); hover for the top-k. Template (\u201cdummy\u201d) tokens are boxed in "
        "purple. Click a cell to drill down; the drilled-down position is outlined in black."
    )
    chart = charts.lens_heatmap(
        result,
        metric,
        positions=range(lo, hi + 1),
        click=True,
        marked=st.session_state.get(Keys.DRILL_POS),
    )
    st.altair_chart(
        chart,
        key=chart_key(DETAIL),
        on_select=_on_pick,
        selection_mode="pick",
        theme=None,
        width="content",
    )
    return chart


def table_columns(table: pd.DataFrame) -> dict[str, Any]:
    """Column config of the drill-down table: narrow fixed widths, short labels (the full
    name is the column's help), probabilities with 3 significant digits (6.2e-6 is not
    0.000)."""
    config: dict[str, Any] = {}
    for name in table.columns:
        if name == "layer":
            config[name] = st.column_config.TextColumn(width=LAYER_PX)
        elif table[name].dtype.kind in "OU":
            config[name] = st.column_config.TextColumn(width=TOKEN_PX)
        elif name.startswith("p"):
            config[name] = st.column_config.NumberColumn(
                help=name, format=charts.PROB_PRINTF, width=PROB_PX
            )
        else:
            short = name.split(" (")[0].split("(")[0].replace("target ", "")  # rank, KL
            number = "%.3f" if table[name].dtype.kind == "f" else "%d"
            config[name] = st.column_config.NumberColumn(
                short, help=name, format=number, width=NUMBER_PX
            )
    return config


def _drilldown(result: LensResult) -> Any:
    st.subheader("Drill-down")
    pick, plot = st.columns([4, 7])
    with pick:
        pos = position_select(
            result,
            Keys.DRILL_POS,
            lambda p: position_label(result, p),
            on_change=lambda: clear_selection(DETAIL),
        )
        st.caption(
            "Every read-out row at this position: the top-k tokens with their probabilities, "
            "the target's probability and rank (1 = top), entropy and KL(out \u2016 layer)."
        )
        if result.target_prob is None:
            st.caption("Set a target token to plot its probability and rank across layers.")
    with plot:
        chart = charts.position_drilldown_chart(result, pos)
        # Stacked panels, each as wide as this column.
        st.altair_chart(chart, theme=None, width="stretch", key="drill_chart")
    table = charts.position_table(result, pos)
    st.dataframe(table, hide_index=True, column_config=table_columns(table), height="content")
    return chart


@st.fragment
def _views(result: LensResult, metric: str) -> None:
    overview, (lo, hi) = _overview(result, metric)
    detail = _detail(result, metric, lo, hi)
    drill = _drilldown(result)
    with st.expander("Export"):
        data_downloads(result, "Grid", stem="lens", key="dl")
        st.caption("Charts (PNG/SVG rendered offline; HTML is standalone, no network needed):")
        chart_downloads("Overview", overview, "lens_overview")
        chart_downloads("Detail", detail, "lens_detail")
        chart_downloads("Drill-down", drill, "lens_drilldown")


def render() -> None:
    """The page: messages, the result's summary and prompt, the colour choice, the views."""
    state = app_state().lens
    show_messages(state.messages)
    result = state.result
    if result is None:
        st.info("Type a prompt in the sidebar and press **Run logit lens**.")
        return
    if has_error(state.messages):
        st.caption("Showing the last good result.")
    st.caption(summary(result, state.job.lens if state.job is not None else None))
    show_prompt(result.prompt, result.system)
    if state.job is not None:
        fidelity_panel(state.job)
    _views(result, _metric(result))


if __name__ == "__main__":  # run as a page of st.navigation
    render()
