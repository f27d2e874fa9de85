"""The detail view and its neighbours: full cells for narrow ranges, one line per quantity in
a tooltip, one probability notation, and the drill-down table's column order."""

from __future__ import annotations

import re

import pytest
from test_charts import cell_layers, data_values, layers_of, make_result

from lenskit import charts

NORMAL_CELL = 62  # px per position in the detail view


def cell_widths_in_svg(svg: str) -> list[float]:
    """Widths of the heatmap cells (the first rect layer) in a Vega SVG rendering."""
    start = svg.index("mark-rect role-mark layer_0_marks")
    group = svg[start : svg.index("</g>", start)]
    return [float(w) for w in re.findall(r'\sd="M[-\d.e]+,[-\d.e]+h([-\d.e]+)v', group)]


@pytest.mark.parametrize("n", range(1, 13))
def test_detail_keeps_full_cells_for_narrow_ranges(n: int) -> None:
    """With "fit-x" the y axis, legend and title would have to fit inside max(62 n, 120) px,
    so a range of <= 6 positions (the chat-template tokens) would leave a plot a few pixels
    wide. The plot is 62 px per position and the decorations are drawn around it ("pad")."""
    result = make_result(tokens=[f"tok{i}" for i in range(20)], n_layers=30)
    chart = charts.lens_heatmap(result, positions=range(20 - n, 20), click=True)
    spec = charts.chart_spec(chart)
    assert spec["width"] / n >= NORMAL_CELL
    autosize = spec.get("autosize", {})
    assert autosize.get("type") == "pad", autosize  # not fit / fit-x: nothing is squeezed
    assert autosize.get("contains", "content") == "content"
    text = next(layer for layer in layers_of(spec) if layer.get("mark", {}).get("type") == "text")
    assert text["mark"]["limit"] >= NORMAL_CELL - 2


@pytest.mark.parametrize("n", [1, 2, 6])
def test_detail_export_renders_full_cells(n: int) -> None:
    """The exported SVG / PNG (vl-convert) of a narrow range: every cell is 62 px wide and the
    whole chart (axis, legend, untruncated title) is drawn around the plot."""
    result = make_result()
    chart = charts.lens_heatmap(result, positions=range(14 - n, 14))
    svg = charts.chart_bytes(chart, "svg").decode()
    widths = cell_widths_in_svg(svg)
    assert len(widths) == n * result.n_rows
    assert min(widths) >= NORMAL_CELL, widths[:6]
    total = float(re.search(r'<svg[^>]*\bwidth="([\d.]+)"', svg).group(1))
    assert total >= n * NORMAL_CELL + 150  # y axis on the left + legend on the right
    assert "Logit lens, top-1 token per cell: Entropy (nats)" in svg  # title not clipped
    png = charts.chart_bytes(chart, "png", scale=1.0)
    png_width = int.from_bytes(png[16:20], "big")  # IHDR width
    assert abs(png_width - total) <= 2


def test_detail_wide_range_fits_the_column() -> None:
    """Up to 14 positions keep 62 px cells; wider ranges shrink their cells so the plot stays
    within DETAIL_CELLS_BUDGET px (40 full cells, 2480 px, would push the template columns
    and the legend off the page), down to DETAIL_MIN_CELL px, labels cut to fit."""
    result = make_result(tokens=[f"tok{i}" for i in range(45)])
    for n, cell in [(14, NORMAL_CELL), (20, 44), (charts.DETAIL_MAX_POSITIONS, 22)]:
        spec = charts.chart_spec(charts.lens_heatmap(result, positions=range(45 - n, 45)))
        assert spec["width"] == cell * n <= charts.DETAIL_CELLS_BUDGET
        text = next(layer for layer in spec["layer"] if layer["mark"]["type"] == "text")
        assert text["mark"]["limit"] == cell - 2
    overview = charts.chart_spec(charts.lens_heatmap(result, labels=False, brush=True))
    assert overview["autosize"]["type"] == "fit-x"  # the overview still follows its container


@pytest.mark.parametrize("metric", sorted(charts.METRICS))
def test_tooltip_lists_each_quantity_once(metric: str) -> None:
    """The coloured metric's value line is not repeated by that metric's own line (coloured
    by entropy, "Entropy (nats)" appears once)."""
    result = make_result()
    spec = charts.chart_spec(charts.lens_heatmap(result, metric, positions=range(8, 14)))
    tooltip = cell_layers(spec)[0]["encoding"]["tooltip"]
    titles = [t["title"].lower().replace("\u2016", "||") for t in tooltip]
    assert len(titles) == len(set(titles)), titles
    values = data_values(spec)
    for t in tooltip:
        if t["field"] != "value" and t.get("type") == "quantitative":
            same = [v[t["field"]] == v["value"] for v in values]
            assert not all(same), f"{t['field']} repeats the coloured value"


def d3_formatted(values: list[float], fmt: str) -> list[str]:
    """The texts Vega draws for ``values`` with the d3 number format ``fmt`` (vl-convert)."""
    import vl_convert as vlc

    spec = {
        "data": {"values": [{"i": i, "p": v} for i, v in enumerate(values)]},
        "mark": "text",
        "encoding": {
            "y": {"field": "i", "type": "ordinal"},
            "text": {"field": "p", "type": "quantitative", "format": fmt},
        },
    }
    svg = vlc.vegalite_to_svg(spec)
    group = svg[svg.index("mark-text role-mark") :]
    return re.findall(r"<text[^>]*>([^<]*)</text>", group)[: len(values)]


SCI = re.compile(r"\d\.\d\de[+-]\d+")


def test_probabilities_keep_one_style() -> None:
    """One notation for every probability: 3 significant digits, exponent. (The browser
    writes both ".3~g" (d3) and "%.3g" (sprintf-js) as a decimal above 1e-6 and in exponent
    notation below, so a column would mix 0.00000612 and 4.17e-7.)"""
    probs = [0.99812, 0.5, 0.0123, 6.12e-6, 4.17e-7, 1.0, 0.0]
    shown = d3_formatted(probs, charts.PROB_FORMAT)
    assert len(shown) == len(probs)
    assert all(SCI.fullmatch(s) for s in shown), shown
    # the tooltips' top-k texts (formatted in Python) read like the d3-formatted fields
    assert [charts.format_prob(p) for p in probs] == shown
    # tables: sprintf-js writes %.Ne with toExponential(N) for every magnitude ("%.3g" is
    # String(Number(x.toPrecision(3))), which changes notation at 1e-6)
    assert re.fullmatch(r"%\.2e", charts.PROB_PRINTF)


def test_drilldown_table_shows_tokens_first() -> None:
    """In the ~510 px column, numeric columns first would hide the top-k tokens behind a
    horizontal scroll. Tokens (with their probabilities) come right after the layer name; the
    values of each column are checked in test_position_table_values."""
    for result in (make_result(), make_result(target=False)):
        table = charts.position_table(result, 13)
        columns = list(table.columns)
        assert columns[:3] == ["layer", "top 1", "p1"]
        tokens = [columns.index(f"top {j + 1}") for j in range(result.top_k)]
        others = [columns.index(c) for c in ("entropy (nats)", "KL(out || layer) (nats)")]
        assert max(tokens) < min(others)
        for j in range(result.top_k):  # each token next to its probability
            assert columns.index(f"p{j + 1}") == tokens[j] + 1
