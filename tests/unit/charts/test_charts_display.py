"""Display fixes: legible drill-down labels, visible clipping at the colour floor, singular
ranges ("block 1"), and titles that name the lens."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from test_charts import cell_layers, data_values, make_result, values_of
from test_charts_sweep import make_sweep

from lenskit import charts
from lenskit.results import LensResult

# --- drill-down x labels -----------------------------------------------------------------------


def drawn_labels(svg: str) -> list[list[tuple[float, str, float]]]:
    """Per x axis of the rows (the one labelled "emb"): ``(centre, text, font px)`` of each
    drawn label, left to right."""
    axes = []
    for group in re.findall(r'<g class="mark-text role-axis-label"[^>]*>(.*?)</g>', svg):
        labels = [
            (float(x), text, float(size))
            for x, size, text in re.findall(
                r'<text text-anchor="middle" transform="translate\(([-\d.]+),[-\d.]+\)"'
                r'[^>]*font-size="([\d.]+)px"[^>]*>([^<]*)</text>',
                group,
            )
        ]
        if any(text == "emb" for _, text, _ in labels):
            axes.append(sorted(labels))
    return axes


def text_width(text: str, size: float) -> float:
    """DejaVu Sans advance widths, rounded up: "m" ~1 em, other letters and digits ~0.64 em."""
    return sum(1.0 if c in "mw" else 0.64 for c in text) * size


@pytest.mark.parametrize("n_layers", [4, 12, 13, 26, 30, 64])
@pytest.mark.parametrize("width", [320, 440])
def test_drilldown_row_labels_never_run_together(n_layers: int, width: int) -> None:
    """With every row labelled, a 31-row drill-down at 320 px puts the centres of "emb" and
    "1" about 10 px apart, so they read "emb1". Neighbouring drawn labels keep at least 3 px
    between them."""
    result = make_result(n_layers=n_layers)
    svg = charts.chart_bytes(
        charts.position_drilldown_chart(result, 13, panel_width=width), "svg"
    ).decode()
    axes = drawn_labels(svg)
    assert len(axes) == 2  # both panels
    for labels in axes:
        assert labels[0][1] == "emb" and labels[-1][1] == "out"
        for (x0, a, size), (x1, b, _) in zip(labels, labels[1:], strict=False):
            gap = (x1 - x0) - (text_width(a, size) + text_width(b, size)) / 2
            assert gap >= 3, (a, b, round(gap, 1))


def test_drilldown_axis_spaces_and_thins_its_labels() -> None:
    """The spec: labels apart by at least DRILL_LABEL_GAP px (Vega drops the ones closer),
    all rows labelled up to DRILL_LABEL_ALL rows, else emb, every 5th block and out, no two
    neighbouring rows."""
    for n_layers in (4, 30):
        result = make_result(n_layers=n_layers)
        names = [str(x) for x in result.layer_names]
        spec = charts.chart_spec(charts.position_drilldown_chart(result, 13))
        for panel in spec["vconcat"]:
            axis = panel["encoding"]["x"]["axis"]
            assert axis["labelOverlap"] and axis["labelSeparation"] >= 4
            assert axis["labelAngle"] == 0
            index = [names.index(v) for v in axis["values"]]
            assert index[0] == 0 and index[-1] == len(names) - 1
            if len(names) <= 13:
                assert axis["values"] == names
            else:
                assert min(np.diff(index)) >= 2
                assert axis["values"] == ["emb", "5", "10", "15", "20", "25", "out"]


# --- clipping at the colour scale's ends -------------------------------------------------------


def clipped_target() -> LensResult:
    """Target probability 0.5 everywhere but rows emb and 1 at position 13 (below the floor)."""
    result = make_result()
    result.target_prob[:] = 0.5
    result.target_prob[:2, 13] = [3e-7, 1e-9]  # emb and row 1 below the 1e-5 floor
    return result


def test_heatmap_says_when_a_probability_is_below_the_floor() -> None:
    """A target probability under PROB_FLOOR is drawn at the floor: the legend title says the
    scale is clipped, and those cells' tooltips say "< 1e-5 (below the colour scale)"."""
    result = clipped_target()
    for labels in (True, False):
        spec = charts.chart_spec(
            charts.lens_heatmap(result, "target_prob", positions=range(10, 14), labels=labels)
        )
        cells = cell_layers(spec)[0]["encoding"]
        assert cells["color"]["title"] == "Target probability (log scale, clipped at 1e-5)"
        note = next(t for t in cells["tooltip"] if t["field"] == "scale_note")
        assert note["title"] == "colour scale"
        values = data_values(spec)
        below = [v for v in values if v["value"] < charts.PROB_FLOOR]
        assert {(v["position"], v["layer"]) for v in below} == {(13, "emb"), (13, "1")}
        assert {v["scale_note"] for v in below} == {"< 1e-5 (below the colour scale)"}
        assert {v["scale_note"] for v in values if v not in below} == {"in range"}
        assert all(v["colour"] == charts.PROB_FLOOR for v in below)  # drawn at the floor


def test_no_clipping_no_note() -> None:
    """In-range values, and round-off at a domain end (a KL of 0 computed as -1e-9), add no
    note."""
    result = make_result()
    result.target_prob[:] = 0.5
    result.kl_to_final[-1] = -1e-9
    kl = charts.chart_spec(charts.lens_heatmap(result, "kl_to_final", labels=False))
    assert cell_layers(kl)[0]["encoding"]["color"]["title"] == "KL(out \u2016 layer) (nats)"
    spec = charts.chart_spec(charts.lens_heatmap(result, "target_prob", labels=False))
    cells = cell_layers(spec)[0]["encoding"]
    assert cells["color"]["title"] == "Target probability (log scale)"
    assert all(t["field"] != "scale_note" for t in cells["tooltip"])
    assert "scale_note" not in data_values(spec)[0]


def test_kl_above_the_domain_is_said_too() -> None:
    """KL(out || layer) above ln V is drawn at ln V: said the same way."""
    result = make_result()
    result.kl_to_final[0, 13] = 50.0
    spec = charts.chart_spec(charts.lens_heatmap(result, "kl_to_final", positions=range(10, 14)))
    cells = cell_layers(spec)[0]["encoding"]
    assert (
        cells["color"]["title"] == f"KL(out \u2016 layer) (nats, clipped at {math.log(1000):.3g})"
    )
    note = next(v for v in data_values(spec) if v["position"] == 13 and v["layer"] == "emb")
    assert note["scale_note"] == "> 6.91 (above the colour scale)"


def test_drilldown_marks_points_below_the_floor() -> None:
    """In the drill-down, probabilities below the floor sit on it as downward triangles; the
    y title and the tooltip say so."""
    result = clipped_target()
    spec = charts.chart_spec(charts.position_drilldown_chart(result, 13))
    panel = spec["vconcat"][0]
    enc = panel["encoding"]
    assert enc["shape"]["condition"] == {"test": "datum.clipped", "value": "triangle-down"}
    assert enc["shape"]["value"] == "circle"
    assert "below 1e-5" in enc["y"]["title"]
    assert any(t.get("field") == "scale_note" for t in enc["tooltip"])
    target = [v for v in values_of(spec, panel) if v["series"] != "top-1"]
    assert [v["clipped"] for v in target[:3]] == [True, True, False]
    assert target[0]["scale_note"] == "< 1e-5 (below the axis, drawn at 1e-5)"
    assert target[0]["shown"] == charts.PROB_FLOOR and target[0]["prob"] == pytest.approx(3e-7)
    svg = charts.chart_bytes(charts.position_drilldown_chart(result, 13), "svg").decode()
    points = re.findall(r'aria-roledescription="point"[^>]*\sd="([^"]*)"', svg)
    assert len(points) == 2 * result.n_rows + result.n_rows  # probabilities, then ranks
    assert len([d for d in points if "A" not in d]) == 2  # two triangles, the rest circles
    # without clipped points the title stays plain
    plain = make_result()
    plain.target_prob[:] = 0.5
    plain.top_probs[:] = 0.5
    plain_spec = charts.chart_spec(charts.position_drilldown_chart(plain, 13))
    assert plain_spec["vconcat"][0]["encoding"]["y"]["title"] == "probability (log)"


# --- ranges of blocks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "text"),
    [
        ([1], "block 1"),
        (range(1, 4), "blocks 1\u20133"),
        ([0, *range(15, 22), 27], "blocks 0, 15\u201321, 27"),
        ([3, 1, 2, 2], "blocks 1\u20133"),
        ([1, 2], "blocks 1\u20132"),
        ([], "no blocks"),
    ],
)
def test_describe_range(values: list[int], text: str) -> None:
    assert charts.describe_range(values, "block") == text


def test_compact_ranges() -> None:
    """The runs alone (the app's quick-pick button): no noun, "" for none."""
    assert charts.compact_ranges([0, 15, 16, 17, 27]) == "0, 15\u201317, 27"
    assert charts.compact_ranges([4]) == "4"
    assert charts.compact_ranges([]) == ""


def test_two_block_model_caption_reads_block_1() -> None:
    """A 2-block model's read-out rows are emb, 1, out: its inner rows are "block 1"."""
    result = make_result(n_layers=2)
    assert [str(x) for x in result.layer_names] == ["emb", "1", "out"]
    assert charts.describe_range(range(1, result.n_rows - 1), "block") == "block 1"
    assert charts.describe_range([], "position") == "no positions"
    assert charts.describe_range([7], "position") == "position 7"


def test_counts_in_subtitles_are_singular_for_one() -> None:
    sweep = charts.sweep_heatmap(make_sweep([0], num_blocks=1, changed=None))
    assert "synthetic \u00b7 1 of 1 block \u00b7" in charts.chart_spec(sweep)["title"]["subtitle"]
    one_token = make_result(tokens=[f"t{i}" for i in range(6)], target=False)
    gen = charts.chart_spec(charts.generation_lens_heatmap(one_token, 5))
    assert "synthetic \u00b7 1 generated token \u00b7" in gen["title"]["subtitle"]


# --- the lens in the titles --------------------------------------------------------------------


def titles(result: LensResult) -> dict[str, str]:
    overview = charts.chart_spec(charts.lens_heatmap(result, labels=False))["title"]["text"]
    detail = charts.chart_spec(charts.lens_heatmap(result, positions=range(10, 14)))
    gen = charts.chart_spec(charts.generation_lens_heatmap(result, 10))["title"]["text"]
    return {"overview": overview, "detail": detail["title"]["text"], "generation": gen}


def test_titles_keep_the_logit_lens_wording() -> None:
    assert titles(make_result()) == {
        "overview": "Logit lens: Entropy (nats)",
        "detail": "Logit lens, top-1 token per cell: Entropy (nats)",
        "generation": "Logit lens on the generated tokens: Entropy (nats)",
    }


def test_titles_name_the_lens() -> None:
    assert titles(make_result(lens="tuned")) == {
        "overview": "Tuned lens: Entropy (nats)",
        "detail": "Tuned lens, top-1 token per cell: Entropy (nats)",
        "generation": "Tuned lens on the generated tokens: Entropy (nats)",
    }
    assert charts.lens_title("logit") == "Logit lens"
    assert charts.lens_title("tuned") == "Tuned lens"
