"""lenskit.charts builders of the dataset mode, on a synthetic DatasetResult: encodings, fixed
colour domains, tooltips naming the interval's kind, small multiples per category, the causal
check's charts and read vs cause (one row per block)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from test_charts import colour_scale, layers_of, values_of

from lenskit import charts
from lenskit.charts.export import chart_bytes, chart_spec
from lenskit.dataset import DatasetResult, interval_kind
from lenskit.dataset.stats import SufficientStats, SweepStats
from lenskit.errors import InputError

ROWS = ["emb", "1", "2", "3", "out"]  # L = 4 blocks
COLUMNS = [-3, -2, -1, 0, 1, 2]
LABELS = ["user -3", "user -2", "user -1", "<|im_end|>", "\u21b5", "<|im_start|>"]
CATEGORIES = ["capitals", "count", "misc"]
N_GEN = 3
WILSON = interval_kind("answer_hit")
NORMAL = interval_kind("entropy")


def _records(n_prompts: int) -> pd.DataFrame:
    """Every prompt reads its answer at the top-1 at row "2", column 1 (the template's
    second slot) and at row "3", column -1 (the user's last token), nowhere else; the control
    token is never top-1."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(n_prompts):
        for layer in ROWS:
            for column in COLUMNS:
                hit = (layer, column) in (("2", 1), ("3", -1))
                rows.append(
                    {
                        "prompt_index": p,
                        "category": CATEGORIES[p % len(CATEGORIES)],
                        "layer": layer,
                        "column": column,
                        "entropy": rng.uniform(1.0, 3.0),
                        "kl_to_final": rng.uniform(0.0, 2.0),
                        "answer_prob": 0.9 if hit else 1e-3,
                        "answer_rank": 0.0 if hit else 40.0,
                        "next_prob": 0.5,
                        "next_rank": 2.0,
                        "later_rank": 3.0,
                        "control_prob": 1e-4,
                        "control_rank": 100.0,
                    }
                )
    return pd.DataFrame(rows)


def _sweep_records(n_prompts: int) -> pd.DataFrame:
    """KL of skipping block b at Gen j = b + j / 10; block 3 flips every answer."""
    rows = [
        {
            "prompt_index": p,
            "category": CATEGORIES[p % len(CATEGORIES)],
            "block": b,
            "gen_index": j,
            "kl": b + j / 10,
            "flipped": float(b == 3),
        }
        for p in range(n_prompts)
        for b in range(len(ROWS) - 1)
        for j in range(N_GEN)
    ]
    return pd.DataFrame(rows)


def make_dataset_result(n_prompts: int = 9, sweep: bool = True, categories: bool = True):
    groups = ["all", *CATEGORIES] if categories else ["all"]
    stats = SufficientStats.empty(groups, ROWS, COLUMNS)
    stats.add_records(_records(n_prompts))
    sweep_stats = None
    if sweep:
        sweep_stats = SweepStats.empty(groups, len(ROWS) - 1, N_GEN)
        sweep_stats.add_records(_sweep_records(n_prompts))
    state = {"model": "synthetic", "options": {"lens": "logit"}}
    return DatasetResult(stats, sweep_stats, list(LABELS), state, n_prompts)


@pytest.fixture(scope="module")
def result() -> DatasetResult:
    return make_dataset_result()


def _encoding(spec: dict, channel: str) -> dict:
    for layer in layers_of(spec):
        enc = layer.get("encoding", {}).get(channel)
        if enc is not None:
            return enc
    raise AssertionError(f"no {channel} encoding")


def _cells(spec: dict) -> list[dict]:
    for layer in layers_of(spec):
        values = values_of(spec, layer)
        if values:
            return values
    raise AssertionError("no data")


def _tooltip_titles(spec: dict) -> dict[str, str]:
    return {t["title"]: t["field"] for t in _encoding(spec, "tooltip")}


# --- the heatmap -------------------------------------------------------------------------------


def test_heatmap_axes_follow_the_lens_view(result):
    spec = chart_spec(charts.dataset_heatmap(result, "answer_hit"))
    x, y = _encoding(spec, "x"), _encoding(spec, "y")
    assert x["field"] == "column" and x["type"] == "ordinal"
    assert x["scale"]["domain"] == COLUMNS
    expr = x["axis"]["labelExpr"]
    assert json.loads(expr[: expr.rindex("[")]) == {
        str(c): t for c, t in zip(COLUMNS, LABELS, strict=True)
    }
    assert y["field"] == "layer" and y["sort"] == ROWS[::-1]  # out on top, emb at the bottom


@pytest.mark.parametrize(
    "stat, domain, scale_type",
    [("answer_hit", [0.0, 1.0], "linear"), ("control_hit", [0.0, 1.0], "linear"),
     ("lift", [-1.0, 1.0], "linear"), ("answer_prob", [charts.PROB_FLOOR, 1.0], "log"),
     ("entropy", [0.0, math.log(500)], "linear"), ("answer_rank", [1.0, 500.0], "log")],
)  # fmt: skip
def test_fixed_colour_domains(result, stat, domain, scale_type):
    scale = colour_scale(chart_spec(charts.dataset_heatmap(result, stat, vocab_size=500)))
    assert scale["domain"] == pytest.approx(domain)
    assert scale.get("type", "linear") == scale_type and scale["clamp"] is True


def test_lift_is_diverging_and_blue_means_read(result):
    lift = colour_scale(chart_spec(charts.dataset_heatmap(result, "lift")))
    rate = colour_scale(chart_spec(charts.dataset_heatmap(result, "answer_hit")))
    assert lift["scheme"] == "blueorange" and lift["reverse"] is True  # +1 blue
    assert rate["scheme"] == "redblue" and rate["reverse"] is False  # 1 blue


def test_domains_without_the_vocabulary_follow_the_data(result):
    entropy = colour_scale(chart_spec(charts.dataset_heatmap(result, "entropy")))
    assert entropy["domain"][1] == pytest.approx(np.nanmax(result.summary("entropy").to_numpy()))
    rank = colour_scale(chart_spec(charts.dataset_heatmap(result, "control_rank")))
    assert rank["domain"] == pytest.approx([1.0, 101.0])  # 0-based 100, shown 1-based


@pytest.mark.parametrize(
    "stat, kind", [("answer_hit", WILSON), ("lift", NORMAL), ("entropy", NORMAL)]
)
def test_tooltip_names_the_interval(result, stat, kind):
    spec = chart_spec(charts.dataset_heatmap(result, stat))
    titles = _tooltip_titles(spec)
    assert titles["95% interval, low"] == "low" and titles["95% interval, high"] == "high"
    assert titles["interval"] == "interval" and titles["prompts counted (n)"] == "n"
    assert {c["interval"] for c in _cells(spec)} == {kind}


def test_cell_values_and_intervals_are_the_summary(result):
    spec = chart_spec(charts.dataset_heatmap(result, "answer_hit", k=1))
    cells = {(c["layer"], c["column"]): c for c in _cells(spec)}
    low, high = result.interval("answer_hit", 1)
    best = cells[("2", 1)]
    assert best["value"] == 1.0 and best["n"] == result.n_prompts
    assert best["low"] == pytest.approx(low.loc["2", 1]) and best["high"] == pytest.approx(1.0)
    assert cells[("out", -3)]["value"] == 0.0 and best["column_label"] == "\u21b5"
    assert len(cells) == len(ROWS) * len(COLUMNS)


def test_ranks_are_shown_one_based(result):
    cells = _cells(chart_spec(charts.dataset_heatmap(result, "answer_rank")))
    best = next(c for c in cells if c["layer"] == "2" and c["column"] == 1)
    assert best["value"] == 1.0  # 0-based rank 0 = the top-1
    assert (
        "1 = top"
        in _encoding(chart_spec(charts.dataset_heatmap(result, "answer_rank")), "color")["title"]
    )


def test_category_filter(result):
    spec = chart_spec(charts.dataset_heatmap(result, "answer_hit", category="count"))
    assert {c["n"] for c in _cells(spec)} == {3}  # 9 prompts over 3 categories
    with pytest.raises(InputError, match="unknown category"):
        charts.dataset_heatmap(result, "answer_hit", category="nope")


def test_bad_statistic_and_k(result):
    with pytest.raises(InputError, match="unknown statistic"):
        charts.dataset_heatmap(result, "answer_hits")
    with pytest.raises(InputError, match="k must be one of"):
        charts.dataset_heatmap(result, "answer_hit", k=2)


# --- small multiples ---------------------------------------------------------------------------


def test_one_panel_per_category(result):
    spec = chart_spec(charts.dataset_category_heatmaps(result, "answer_hit", columns=2))
    assert len(spec["concat"]) == len(CATEGORIES) and spec["columns"] == 2
    assert spec["resolve"]["scale"]["color"] == "shared"
    for panel, category in zip(spec["concat"], CATEGORIES, strict=True):
        assert panel["title"]["text"].startswith(category)
        assert {c["category"] for c in _cells({"datasets": spec["datasets"], **panel})} == {
            category
        }
    scales = [colour_scale(panel) for panel in spec["concat"]]
    assert all(s["domain"] == [0.0, 1.0] for s in scales)


def test_no_categories_no_small_multiples():
    with pytest.raises(InputError, match="no categories"):
        charts.dataset_category_heatmaps(make_dataset_result(categories=False), "answer_hit")


# --- the causal check ----------------------------------------------------------------------


def test_sweep_heatmap(result):
    spec = chart_spec(charts.dataset_sweep_heatmap(result))
    y, x = _encoding(spec, "y"), _encoding(spec, "x")
    assert y["field"] == "block" and y["sort"] == [3, 2, 1, 0]  # block 0 at the bottom
    assert x["sort"] == ["Gen0", "Gen1", "Gen2"]
    scale = colour_scale(spec)
    assert scale["domain"] == [0.0, charts.SWEEP_KL_MAX] and scale["scheme"] == charts.SWEEP_SCHEME
    cells = {(c["block"], c["gen"]): c for c in _cells(spec)}
    assert cells[(2, 1)]["kl"] == pytest.approx(2.1) and cells[(2, 1)]["n"] == 9
    assert {c["interval"] for c in cells.values()} == {NORMAL}


def test_flip_chart_has_wilson_error_bars(result):
    spec = chart_spec(charts.dataset_flip_chart(result))
    marks = {
        layer["mark"]["type"]: layer["encoding"] for layer in layers_of(spec) if "mark" in layer
    }
    assert marks["bar"]["x"]["field"] == "rate" and marks["bar"]["x"]["scale"]["domain"] == [0, 1]
    assert marks["rule"]["x"]["field"] == "low" and marks["rule"]["x2"]["field"] == "high"
    cells = {c["block"]: c for c in _cells(spec)}
    assert cells[3]["rate"] == 1.0 and cells[0]["rate"] == 0.0
    assert {c["interval"] for c in cells.values()} == {WILSON}


def test_sweep_charts_need_the_sweep():
    plain = make_dataset_result(sweep=False)
    for build in (
        charts.dataset_sweep_heatmap,
        charts.dataset_flip_chart,
        charts.read_vs_cause_chart,
    ):
        with pytest.raises(InputError, match="sweep=True"):
            build(plain)


def test_read_vs_cause_has_one_row_per_block(result):
    spec = chart_spec(charts.read_vs_cause_chart(result, k=1))
    assert len(spec["hconcat"]) == 2 and spec["resolve"]["scale"]["y"] == "shared"
    rows = _cells(spec)
    assert [r["block"] for r in rows] == [0, 1, 2, 3]
    # block 1's output is row "2": the answer is read there, at the template's column 1
    assert (
        rows[1]["read_row"] == "2" and rows[1]["hit"] == 1.0 and rows[1]["column_label"] == "\u21b5"
    )
    assert rows[0]["hit"] == 0.0 and rows[3]["read_row"] == "out"
    # block 2's output (row "3") has the answer at the user's last token only: not read there
    assert rows[2]["hit"] == 0.0 and rows[2]["column_label"] in LABELS[3:]
    for r in rows:  # KL pooled over the generated tokens: b + mean(j) / 10
        assert r["kl"] == pytest.approx(r["block"] + 0.1) and r["kl_n"] == 9 * N_GEN
        assert r["kl_low"] <= r["kl"] <= r["kl_high"]


# --- export --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [lambda r: charts.dataset_heatmap(r, "lift"),
     lambda r: charts.dataset_category_heatmaps(r, "answer_hit"),
     charts.dataset_sweep_heatmap, charts.dataset_flip_chart, charts.read_vs_cause_chart],
)  # fmt: skip
def test_renders_offline(result, build):
    svg = chart_bytes(build(result), "svg").decode()
    assert svg.startswith("<svg") and "synthetic" in svg  # the subtitle names the model
