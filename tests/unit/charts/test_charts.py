"""lenskit.charts on synthetic LensResults: specs, fixed colour domains, selections, export."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from lenskit import charts
from lenskit.charts.export import iter_layers
from lenskit.results import LensResult

TOKENS = [
    "<|im_start|>",
    "user",
    "Ċ",
    "What",
    "Ġis",
    "Ġthe",
    "Ġthe",  # a repeated token must stay a separate column
    "Ġcapital",
    "?",
    "<|im_end|>",
    "Ċ",
    "<|im_start|>",
    "assistant",
    "Ċ",
]
TEMPLATE = [9, 10, 11, 12, 13]


def make_result(
    tokens: list[str] | None = None,
    n_layers: int = 4,
    k: int = 3,
    vocab_size: int = 1000,
    target: bool = True,
    seed: int = 0,
    scale: float = 1.0,
    lens: str = "logit",
) -> LensResult:
    """A synthetic, shape-consistent LensResult (no model needed)."""
    tokens = list(TOKENS if tokens is None else tokens)
    t, r = len(tokens), n_layers + 1
    rng = np.random.default_rng(seed)
    top_probs = np.sort(rng.dirichlet(np.ones(k + 2), (r, t))[..., :k], axis=-1)[..., ::-1]
    vocab = ["ĠSydney", "ĠCanberra", "Sy", "ĠP", "Ċ", "<script>alert(1)</script>", 'q"uo\\te']
    extra: dict = {}
    if target:
        extra = dict(
            target=" Canberra",
            target_id=7,
            target_prob=rng.uniform(0, 1, (r, t)) ** 4,
            target_rank=rng.integers(0, vocab_size, (r, t)),
        )
    template = [p for p in TEMPLATE if p < t] if tokens == TOKENS else []
    return LensResult(
        token_ids=np.arange(t),
        tokens=tokens,
        display_tokens=tokens,
        layer_names=["emb"] + [str(i) for i in range(1, n_layers)] + ["out"],
        entropy=scale * rng.uniform(0, math.log(vocab_size), (r, t)),
        kl_to_final=scale * rng.uniform(0, 5, (r, t)),
        top_ids=rng.integers(0, vocab_size, (r, t, k)),
        top_tokens=rng.choice(vocab, (r, t, k)),
        top_probs=top_probs,
        is_special=[tok.startswith("<|") for tok in tokens],
        template_positions=template,
        vocab_size=vocab_size,
        model_name="synthetic",
        prompt="What is the the capital?",
        lens=lens,
        **extra,
    )


def layers_of(spec: dict) -> list[dict]:
    return list(iter_layers(spec))


def values_of(spec: dict, layer: dict) -> list[dict]:
    """A layer's inline values (Altair moves them to the top-level ``datasets``)."""
    data = layer.get("data") or {}
    if "values" in data:
        return data["values"]
    if "name" in data:
        return spec.get("datasets", {}).get(data["name"], [])
    return []


def data_values(spec: dict) -> list[dict]:
    """Values of the first layer whose data are heatmap cells."""
    for layer in layers_of(spec):
        values = values_of(spec, layer)
        if values and "layer" in values[0]:
            return values
    raise AssertionError("no cell data in spec")


def box_values(spec: dict) -> list[dict]:
    """Values of the box layers (template boxes, detail-range box)."""
    return [v for layer in layers_of(spec) for v in values_of(spec, layer) if "kind" in v]


def colour_scale(spec: dict) -> dict:
    for layer in layers_of(spec):
        colour = layer.get("encoding", {}).get("color", {})
        if "scale" in colour:
            return colour["scale"]
    raise AssertionError("no colour scale in spec")


def cell_layers(spec: dict) -> list[dict]:
    """The rect layers that carry the cells' tooltip (the heatmap cells)."""
    return [
        layer
        for layer in layers_of(spec)
        if layer.get("mark", {}).get("type") == "rect" and "tooltip" in layer.get("encoding", {})
    ]


def params(spec: dict) -> dict[str, dict]:
    return {p["name"]: p for layer in layers_of(spec) for p in layer.get("params", []) or []}


def test_metrics_table() -> None:
    assert set(charts.METRICS) == {"entropy", "kl_to_final", "top1_prob", "target_prob"}
    for key, metric in charts.METRICS.items():
        assert metric.key == key
        assert metric.title and metric.units in {"nats", "probability"}
        assert metric.scheme
    assert charts.METRICS["entropy"].domain(49152) == pytest.approx((0.0, math.log(49152)))
    assert charts.METRICS["top1_prob"].domain(49152) == (0.0, 1.0)
    assert charts.METRICS["target_prob"].needs_target


@pytest.mark.parametrize("metric", ["entropy", "kl_to_final", "top1_prob", "target_prob"])
def test_colour_domain_is_fixed(metric: str) -> None:
    """Two results with very different values get the same colour domain."""
    a = charts.chart_spec(charts.lens_heatmap(make_result(seed=1, scale=0.1), metric))
    b = charts.chart_spec(charts.lens_heatmap(make_result(seed=2, scale=1.0), metric))
    sa, sb = colour_scale(a), colour_scale(b)
    assert sa["domain"] == sb["domain"]
    assert sa["domain"] == pytest.approx(list(charts.METRICS[metric].domain(1000)))
    assert sa["clamp"] is True


def test_entropy_blue_low_red_high() -> None:
    scale = colour_scale(charts.chart_spec(charts.lens_heatmap(make_result(), "entropy")))
    # Vega's "redblue" runs red -> blue; reversed, low entropy is blue and high is red.
    assert scale["scheme"] == "redblue" and scale["reverse"] is True
    assert scale["domain"] == pytest.approx([0.0, math.log(1000)])


def test_overview_has_no_text_and_a_brush() -> None:
    result = make_result()
    spec = charts.chart_spec(charts.lens_heatmap(result, labels=False, brush=True))
    marks = [layer.get("mark", {}) for layer in layers_of(spec)]
    kinds = [m["type"] if isinstance(m, dict) else m for m in marks if m]
    assert "text" not in kinds
    brush = params(spec)["brush"]
    assert brush["select"]["type"] == "interval"
    assert brush["select"]["encodings"] == ["x"]
    values = data_values(spec)
    assert len(values) == result.n_rows * result.n_positions
    assert "top1_text" not in values[0]  # the overview stays light


def test_detail_labels_tooltip_and_positions() -> None:
    result = make_result()
    spec = charts.chart_spec(charts.lens_heatmap(result, positions=range(4, 14), click=True))
    values = data_values(spec)
    assert {v["position"] for v in values} == set(range(4, 14))
    assert len(values) == result.n_rows * 10
    # every cell is labelled with its top-1 token and has a top-k tooltip
    assert all(v["label"] for v in values)
    assert {f"top{j}_text" for j in (1, 2, 3)} <= set(values[0])
    kinds = [
        (layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"])
        for layer in layers_of(spec)
        if "mark" in layer
    ]
    assert "text" in kinds
    assert params(spec)["pick"]["select"]["type"] == "point"
    # the repeated "Ġthe" at 5 and 6 are two columns: x is the position, not the token
    cells = next(layer for layer in layers_of(spec) if layer.get("mark", {}).get("type") == "rect")
    assert cells["encoding"]["x"]["field"] == "position"
    assert cells["encoding"]["x"]["scale"]["domain"] == list(range(4, 14))


def test_layers_emb_at_bottom_out_on_top() -> None:
    result = make_result(n_layers=6)
    spec = charts.chart_spec(charts.lens_heatmap(result))
    cells = next(layer for layer in layers_of(spec) if layer.get("mark", {}).get("type") == "rect")
    order = cells["encoding"]["y"]["sort"]
    # Vega-Lite draws the first ordinal value at the top
    assert order[0] == "out" and order[-1] == "emb"
    assert order == ["out", "5", "4", "3", "2", "1", "emb"]


def test_template_tokens_boxed_and_coloured() -> None:
    result = make_result()
    spec = charts.chart_spec(charts.lens_heatmap(result, positions=range(6, 14)))
    assert box_values(spec) == [{"first": 9, "last": 13, "kind": "template"}]
    cells = next(layer for layer in layers_of(spec) if "tooltip" in layer.get("encoding", {}))
    axis = cells["encoding"]["x"]["axis"]
    assert "9, 10, 11, 12, 13" in json.dumps(axis["labelColor"])
    # no template in range: no box
    spec2 = charts.chart_spec(charts.lens_heatmap(result, positions=range(0, 5)))
    assert box_values(spec2) == []


def test_overview_highlight_box() -> None:
    spec = charts.chart_spec(charts.lens_heatmap(make_result(), labels=False, highlight=(3, 8)))
    assert {json.dumps(v) for v in box_values(spec)} == {
        json.dumps({"first": 3, "last": 8, "kind": "detail range"})
    }


def box_strokes(spec: dict) -> set[str]:
    """Stroke colours of the box layers (unfilled rects)."""
    return {
        str(layer["mark"]["stroke"]).lower()
        for layer in layers_of(spec)
        if isinstance(layer.get("mark"), dict)
        and "fill" in layer["mark"]
        and layer["mark"]["fill"] is None
    }


def test_each_colour_means_one_thing_in_the_overview() -> None:
    """Purple marks template tokens only; the detail range is boxed in another colour, and
    the axis title names both (a purple box would read as "template tokens")."""
    result = make_result()
    spec = charts.chart_spec(charts.lens_heatmap(result, labels=False, highlight=(3, 8)))
    strokes = box_strokes(spec)
    assert strokes and charts.TEMPLATE_COLOR.lower() not in strokes
    assert charts.HIGHLIGHT_COLOR.lower() in strokes
    cells = cell_layers(spec)[0]
    title = cells["encoding"]["x"]["axis"]["title"]
    assert "template tokens in purple" in title and "dashed box: detail view" in title
    # the template boxes of the detail view stay purple
    detail = charts.chart_spec(charts.lens_heatmap(result, positions=range(6, 14)))
    assert box_strokes(detail) == {charts.TEMPLATE_COLOR.lower()}
    # no template tokens shown: the title does not mention purple
    raw = make_result(tokens=[f"w{i}" for i in range(6)])
    raw_spec = charts.chart_spec(charts.lens_heatmap(raw, labels=False, highlight=(1, 2)))
    assert "purple" not in cell_layers(raw_spec)[0]["encoding"]["x"]["axis"]["title"]


def test_target_metric_needs_target() -> None:
    with pytest.raises(ValueError, match="target"):
        charts.lens_heatmap(make_result(target=False), "target_prob")
    with pytest.raises(ValueError, match="unknown metric"):
        charts.lens_heatmap(make_result(), "nope")
    with pytest.raises(ValueError, match="positions"):
        charts.lens_heatmap(make_result(), positions=[0, 99])


def test_metric_values() -> None:
    result = make_result()
    np.testing.assert_array_equal(
        charts.metric_values(result, "top1_prob"), result.top_probs[..., 0]
    )
    np.testing.assert_array_equal(charts.metric_values(result, "kl_to_final"), result.kl_to_final)


def test_nan_cells_are_json_null() -> None:
    result = make_result()
    result.entropy[1, 2] = np.nan
    spec = charts.chart_spec(charts.lens_heatmap(result, labels=False))
    text = json.dumps(spec, allow_nan=False)  # raises on NaN
    assert "null" in text


def test_selected_positions() -> None:
    event = {"selection": {"brush": {"position": [24, 25, 26]}}}
    assert charts.selected_positions(event) == [24, 25, 26]
    assert charts.selected_positions({"position": [3, "4"]}) == [3, 4]
    assert charts.selected_positions({"selection": {"pick": [{"position": 7}]}}) == [7]
    assert charts.selected_positions({"selection": {"brush": {}}}) == []
    assert charts.selected_positions(None) == []


def test_default_detail_range_covers_template() -> None:
    result = make_result()
    first, last = charts.default_detail_range(result, width=3)
    assert last == result.n_positions - 1
    assert first <= min(TEMPLATE)
    long = make_result(tokens=[f"t{i}" for i in range(200)])
    assert charts.default_detail_range(long) == (200 - charts.DEFAULT_DETAIL_WIDTH, 199)


def test_large_prompt_overview_is_light() -> None:
    result = make_result(tokens=[f"Ġw{i}" for i in range(600)], n_layers=30, k=5)
    spec = charts.chart_spec(charts.lens_heatmap(result, labels=False, brush=True))
    cells = data_values(spec)
    assert len(cells) == 31 * 600
    assert set(cells[0]) <= {"position", "layer", "token", "value", "colour", "top1"}
    axis = next(layer for layer in layers_of(spec) if layer.get("mark", {}).get("type") == "rect")[
        "encoding"
    ]["x"]["axis"]
    assert len(axis["values"]) <= 80  # at most ~80 axis labels


def test_position_table_and_drilldown() -> None:
    result = make_result()
    table = charts.position_table(result, 13)
    assert list(table["layer"]) == ["out", "3", "2", "1", "emb"]
    assert {"top 1", "p1", "entropy (nats)", "target rank (1 = top)"} <= set(table.columns)
    spec = charts.chart_spec(charts.position_drilldown_chart(result, 13))
    assert len(spec["vconcat"]) == 2
    assert "rank" in json.dumps(spec["vconcat"][1]["encoding"]["y"])
    assert spec["vconcat"][0]["encoding"]["color"]["scale"]["domain"] == [
        "top-1",
        "target \u2423Canberra",
    ]
    no_target = charts.chart_spec(charts.position_drilldown_chart(make_result(target=False), 0))
    assert "entropy" in json.dumps(no_target["vconcat"][1]["encoding"]["y"])
    # without a target the legend names only the top-1 series (no "target None")
    assert no_target["vconcat"][0]["encoding"]["color"]["scale"]["domain"] == ["top-1"]
    with pytest.raises(ValueError):
        charts.position_table(result, 99)


def test_detail_outlines_the_drilled_position() -> None:
    """The detail view outlines the position the drill-down is on."""
    result = make_result()

    def drill_boxes(marked: int | None) -> list[dict]:
        spec = charts.chart_spec(
            charts.lens_heatmap(result, positions=range(10, 14), marked=marked)
        )
        return [
            {**v, "stroke": layer["mark"].get("stroke")}
            for layer in spec["layer"]
            for v in values_of(spec, layer)
            if v.get("kind") == "drill-down position"
        ]

    boxes = drill_boxes(12)
    assert {(b["first"], b["last"]) for b in boxes} == {(12, 12)}
    assert charts.HIGHLIGHT_COLOR in {b["stroke"] for b in boxes}
    assert drill_boxes(3) == [] and drill_boxes(None) == []  # not in the range: no box


def test_drilldown_probabilities_on_a_log_scale() -> None:
    """On a linear 0..1 scale a target at 1e-6 in early layers would be a flat 0. The panel is
    log from PROB_FLOOR; values below it sit on the floor, the tooltip keeps the exact one."""
    result = make_result()
    result.target_prob[:, 13] = np.geomspace(1e-9, 0.9, result.n_rows)
    spec = charts.chart_spec(charts.position_drilldown_chart(result, 13))
    panel = spec["vconcat"][0]
    y = panel["encoding"]["y"]
    assert y["field"] == "shown" and y["scale"]["type"] == "log"
    assert y["scale"]["domain"] == [charts.PROB_FLOOR, 1]
    target = [v for v in values_of(spec, panel) if v["series"] != "top-1"]
    assert [v["prob"] for v in target] == pytest.approx(result.target_prob[:, 13].tolist())
    assert [v["shown"] for v in target] == pytest.approx(
        np.maximum(result.target_prob[:, 13], charts.PROB_FLOOR).tolist()
    )
    assert any(t["field"] == "prob" for t in panel["encoding"]["tooltip"] if isinstance(t, dict))


def test_byte_level_fragments_in_cells_and_table() -> None:
    """With result.byte_level, a top-1 token that is part of a character shows its bytes
    (its spelling "\u00f0\u0141" would read like a real prediction); unknown keeps the
    spelling."""
    fragment = "\u00f0\u0141"  # byte-level spelling of F0 9F, the start of an emoji
    result = make_result()
    result.top_tokens[:, :, 0] = fragment
    result.byte_level = True
    cells = data_values(charts.chart_spec(charts.lens_heatmap(result, positions=range(10, 14))))
    assert {c["label"] for c in cells} == {"<F0 9F>"}
    assert set(charts.position_table(result, 13)["top 1"]) == {"<F0 9F>"}
    result.byte_level = None
    cells = data_values(charts.chart_spec(charts.lens_heatmap(result, positions=range(10, 14))))
    assert {c["label"] for c in cells} == {fragment}


@pytest.mark.parametrize("k", [3, charts.TOOLTIP_TOP_K, 50])
def test_tooltip_lists_at_most_ten_top_tokens(k: int) -> None:
    """A top-50 tooltip is taller than a window (its top off-screen). It lists 10 and says how
    many more the drill-down table holds; the table keeps all k."""
    result = make_result(k=k)
    detail = charts.chart_spec(charts.lens_heatmap(result, positions=range(10, 14)))
    rect = next(layer for layer in detail["layer"] if layer["mark"]["type"] == "rect")
    titles = [t["title"] for t in rect["encoding"]["tooltip"]]
    shown = min(k, charts.TOOLTIP_TOP_K)
    assert [t for t in titles if t.startswith("top ")] == [
        *(f"top {j + 1}" for j in range(shown)),
        *([f"top 11..{k}"] if k > shown else []),
    ]
    cell = data_values(detail)[0]
    assert (f"top{shown + 1}_text" in cell) is False
    assert cell.get("more") == (f"{k - shown} more in the drill-down table" if k > shown else None)
    assert f"top {k}" in charts.position_table(result, 13).columns


def test_drilldown_fits_a_narrow_column() -> None:
    """The two panels are stacked and narrow, so the chart fits the drill-down's right column
    (~440 px at a 1280 px window; side by side they would be ~1100 px, the rank panel cut
    off). Stacked (a plain vconcat, no autosize of its own), Streamlit's width="stretch"
    sets each panel to the column's width."""
    result = make_result(n_layers=30, vocab_size=49152)
    for chart in (
        charts.position_drilldown_chart(result, 13),
        charts.position_drilldown_chart(make_result(n_layers=30, target=False), 13),
    ):
        spec = charts.chart_spec(chart)
        assert "hconcat" not in spec and len(spec["vconcat"]) == 2
        assert "autosize" not in spec  # Streamlit then fits the panels to the container
        assert all(panel["width"] <= 360 for panel in spec["vconcat"])
        svg = charts.chart_bytes(chart, "svg").decode()
        width = float(re.search(r'<svg[^>]*\bwidth="([\d.]+)"', svg).group(1))
        assert width <= 440, width


def test_rank_is_one_based_everywhere() -> None:
    """One rank convention for users, 1 = top, said in every label (so the table, the chart
    and the heatmap tooltip show the same number); LensResult.target_rank stays 0-based."""
    result = make_result()
    result.target_rank[:, 13] = np.arange(result.n_rows) * 100 + 827
    expected = (result.target_rank[:, 13] + 1).tolist()  # emb .. out
    table = charts.position_table(result, 13)
    assert table["target rank (1 = top)"].tolist() == expected[::-1]  # out .. emb
    drill = charts.chart_spec(charts.position_drilldown_chart(result, 13))
    rank_panel = drill["vconcat"][1]
    assert [v["rank"] for v in values_of(drill, rank_panel)] == expected
    assert "1 = top" in rank_panel["encoding"]["y"]["title"]
    detail = charts.chart_spec(charts.lens_heatmap(result, positions=range(10, 14)))
    cells = [v for v in data_values(detail) if v["position"] == 13]
    names = [str(x) for x in result.layer_names]
    assert {v["layer"]: v["target_rank"] for v in cells} == dict(zip(names, expected, strict=True))
    titles = [t.get("title", "") for t in cell_layers(detail)[0]["encoding"]["tooltip"]]
    rank_titles = [t for t in titles if "rank" in t]
    assert rank_titles == ["target rank (1 = top)"]
    assert not any("0 = top" in json.dumps(s) for s in (detail, drill))


def test_small_probabilities_are_readable() -> None:
    """Probabilities keep 3 significant digits: 6.2e-6 does not show as 0.0000 / 0.000."""
    result = make_result()
    result.target_prob[:, 13] = 6.2e-6
    result.top_probs[:, 13, 2] = 6.2e-6
    detail = charts.chart_spec(charts.lens_heatmap(result, positions=range(10, 14)))
    tooltip = cell_layers(detail)[0]["encoding"]["tooltip"]
    p_target = next(t for t in tooltip if t["field"] == "target_prob")
    assert p_target["format"] == charts.PROB_FORMAT == ".2e"
    top3 = [v["top3_text"] for v in data_values(detail) if v["position"] == 13]
    assert all(text.endswith("6.20e-6") for text in top3), top3
    for metric in ("top1_prob", "target_prob"):
        spec = charts.chart_spec(charts.lens_heatmap(result, metric, positions=range(10, 14)))
        value = next(
            t for t in cell_layers(spec)[0]["encoding"]["tooltip"] if t["field"] == "value"
        )
        assert value["format"] == charts.PROB_FORMAT
    drill = charts.chart_spec(charts.position_drilldown_chart(result, 13))
    prob = next(t for t in drill["vconcat"][0]["encoding"]["tooltip"] if t["field"] == "prob")
    assert prob["format"] == charts.PROB_FORMAT
    assert charts.format_prob(6.2e-6) == "6.20e-6" and charts.format_prob(0.99812) == "9.98e-1"


def test_weird_tokens_render(tmp_path) -> None:
    """Quotes, backslashes, HTML and non-ASCII tokens survive the axis label expression."""
    tokens = ['a"b', "c\\d", "<b>x</b>", "Ġé\u2603", "Ċ", "'"]
    result = make_result(tokens=tokens, n_layers=2, k=2, target=False)
    svg = charts.chart_bytes(charts.lens_heatmap(result), "svg").decode()
    assert "<svg" in svg
    assert "&lt;b&gt;x&lt;/b&gt;" in svg  # drawn as text, escaped
    assert "\u2603" in svg and "\u21b5" in svg  # newline shown as ↵


def test_export_formats(tmp_path) -> None:
    chart = charts.lens_heatmap(make_result(n_layers=2, k=2), positions=range(8, 14))
    png = charts.save_chart(chart, tmp_path / "x.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = charts.save_chart(chart, tmp_path / "sub" / "x.svg").read_text()
    assert svg.lstrip().startswith("<svg")
    html = charts.save_chart(chart, tmp_path / "x.html").read_text()
    # standalone: the Vega libraries are inlined, nothing is fetched from a CDN
    assert "<html" in html.lower() and "vegaEmbed" in html
    assert not re.search(r"<script[^>]+src=[\"']https?://", html)
    assert "cdn.jsdelivr" not in html
    assert len(html) > 200_000  # vega + vega-lite + vega-embed bundled
    spec = json.loads(charts.chart_bytes(chart, "json"))
    assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")
    with pytest.raises(ValueError):
        charts.save_chart(chart, tmp_path / "x.pdf")
    with pytest.raises(ValueError):
        charts.chart_bytes(chart, "gif")


def test_drilldown_exports(tmp_path) -> None:
    chart = charts.position_drilldown_chart(make_result(n_layers=2, k=2), 3)
    assert charts.chart_bytes(chart, "svg").startswith(b"<svg")


def test_single_position_prompt() -> None:
    result = make_result(tokens=["a"], target=False)
    assert charts.default_detail_range(result) == (0, 0)
    for chart in (
        charts.lens_heatmap(result),
        charts.lens_heatmap(result, labels=False, brush=True, highlight=(0, 0)),
        charts.position_drilldown_chart(result, 0),
    ):
        assert charts.chart_bytes(chart, "svg").startswith(b"<svg")


def test_position_table_values() -> None:
    """Each column of the drill-down table holds its own quantity, rows out..emb."""
    result = make_result()
    p = 13
    table = charts.position_table(result, p)
    rows = slice(None, None, -1)  # out first
    np.testing.assert_allclose(table["entropy (nats)"], result.entropy[rows, p], rtol=1e-6)
    np.testing.assert_allclose(
        table["KL(out || layer) (nats)"], result.kl_to_final[rows, p], rtol=1e-6
    )
    np.testing.assert_allclose(table["p1"], result.top_probs[rows, p, 0], rtol=1e-6)
    np.testing.assert_array_equal(table["target rank (1 = top)"], result.target_rank[rows, p] + 1)
    assert not np.allclose(result.entropy[:, p], result.kl_to_final[:, p])
