"""lenskit.charts builders of the "Generation & interventions" tab, on synthetic results.

sweep_heatmap (SweepResult), generation_lens_heatmap (LensResult over prompt + generation),
layer_pairwise_heatmap (names + KL matrix), band_layers and gen_labels: encodings, fixed
colour domains, labels, escaping, and offline PNG/SVG/HTML export.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_charts import colour_scale, layers_of, make_result, values_of

from lenskit import charts
from lenskit.results import SweepResult
from lenskit.text.tokens import format_token

GEN = ["The", "\u0120capital", "\u0120of", "\u0120Australia", "\u0120is"]


def make_sweep(
    layers: list[int] | None = None,
    g: int = 5,
    num_blocks: int = 30,
    scale: float = 1.0,
    seed: int = 0,
    changed: tuple[int, int] | None = (2, 3),
) -> SweepResult:
    """A shape-consistent synthetic SweepResult (no model needed)."""
    layers = charts.band_layers(num_blocks) if layers is None else layers
    n_l = len(layers)
    rng = np.random.default_rng(seed)
    gen = [GEN[j % len(GEN)] for j in range(g)]
    top_ids = np.tile(np.arange(g), (n_l, 1))
    top_tokens = np.array([gen] * n_l, dtype=object).reshape(n_l, g)
    if changed is not None:
        top_ids[changed] = 999
        top_tokens[changed] = "<script>alert(1)</script>"
    return SweepResult(
        layers=layers,
        generated_ids=np.arange(g),
        generated_tokens=gen,
        generated_display_tokens=[format_token(t, 0) for t in gen],
        kl=scale * rng.uniform(0.0, 1.5, (n_l, g)),
        top_ids_intervened=top_ids,
        top_tokens_intervened=top_tokens,
        generated_prob_clean=rng.uniform(0.5, 1.0, g),
        generated_prob_intervened=rng.uniform(0.0, 1.0, (n_l, g)),
        positions=[9, 10, 11, 12, 13],
        prompt_token_ids=np.arange(14),
        prompt_tokens=[f"t{i}" for i in range(14)],
        intervention="skip",
        num_blocks=num_blocks,
        max_new_tokens=max(g, 1),
        model_name="synthetic",
    )


def rect(spec: dict) -> dict:
    return next(x for x in layers_of(spec) if (x.get("mark") or {}).get("type") == "rect")


def cells(spec: dict) -> list[dict]:
    return next(v for x in layers_of(spec) if (v := values_of(spec, x)))


# --- quick pick and labels -------------------------------------------------------------------


def test_band_layers_matches_the_seed_for_30_blocks() -> None:
    assert charts.band_layers(30) == [0, 15, 16, 17, 18, 19, 20, 21, 27]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 12, 24, 30, 32, 80])
def test_band_layers_in_range(n: int) -> None:
    picked = charts.band_layers(n)
    assert picked == sorted(set(picked))
    assert picked[0] == 0 and all(0 <= b < n for b in picked)


def test_band_layers_small() -> None:
    assert charts.band_layers(0) == []
    assert charts.band_layers(1) == [0]
    assert charts.band_layers(3) == [0, 1, 2]


def test_gen_labels() -> None:
    labels = charts.gen_labels(["The", "\u0120capital", "\u010a", "", "supercalifragilistic"])
    assert labels[:4] == [
        "Gen0 \u00b7 The",
        "Gen1 \u00b7 \u2423capital",
        "Gen2 \u00b7 \u21b5",
        "Gen3 \u00b7 \u2205",
    ]
    assert labels[4].startswith("Gen4 \u00b7 supercal") and labels[4].endswith("\u2026")


# --- sweep heatmap ---------------------------------------------------------------------------


def test_sweep_encodings() -> None:
    result = make_sweep()
    spec = charts.chart_spec(charts.sweep_heatmap(result))
    enc = rect(spec)["encoding"]
    assert enc["x"]["field"] == "gen_label" and enc["x"]["type"] == "nominal"
    labels = enc["x"]["scale"]["domain"]
    assert labels == [
        "Gen0 \u00b7 The",
        "Gen1 \u00b7 \u2423capital",
        "Gen2 \u00b7 \u2423of",
        "Gen3 \u00b7 \u2423Australia",
        "Gen4 \u00b7 \u2423is",
    ]
    # layers on y, block 0 at the bottom (the last entry of an ordinal y domain)
    assert enc["y"]["field"] == "layer" and enc["y"]["type"] == "ordinal"
    assert enc["y"]["scale"]["domain"] == [27, 21, 20, 19, 18, 17, 16, 15, 0]
    assert enc["color"]["field"] == "colour" and enc["color"]["type"] == "quantitative"
    assert "nats" in enc["color"]["title"]
    tips = {t["field"] for t in enc["tooltip"]}
    assert {"layer", "gen_label", "kl", "top_intervened", "changed"} <= tips
    data = cells(spec)
    assert len(data) == result.kl.size
    cell = next(d for d in data if d["layer"] == 16 and d["gen"] == 3)
    assert cell["kl"] == pytest.approx(float(result.kl[2, 3]))
    assert cell["changed"] == "yes" and cell["label"]
    assert cell["top_intervened"].startswith("<script>")  # text, drawn escaped by Vega
    others = [d for d in data if not (d["layer"] == 16 and d["gen"] == 3)]
    assert all(d["changed"] == "no" and d["label"] == "" for d in others)


def test_sweep_colour_domain_is_fixed() -> None:
    a = colour_scale(charts.chart_spec(charts.sweep_heatmap(make_sweep(scale=0.1, seed=1))))
    b = colour_scale(charts.chart_spec(charts.sweep_heatmap(make_sweep(scale=9.0, seed=2))))
    assert a == b
    assert a["domain"] == [0.0, charts.SWEEP_KL_MAX] == [0.0, 2.0]
    assert a["scheme"] == "yelloworangered" and a["clamp"] is True
    custom = colour_scale(charts.chart_spec(charts.sweep_heatmap(make_sweep(), kl_max=5)))
    assert custom["domain"] == [0.0, 5.0]


def test_sweep_log_scale() -> None:
    result = make_sweep(scale=0.01)
    result.kl[0, 0] = 0.0
    spec = charts.chart_spec(charts.sweep_heatmap(result, scale="log"))
    scale = colour_scale(spec)
    assert scale["type"] == "log" and scale["clamp"] is True
    assert scale["domain"] == list(charts.SWEEP_LOG_DOMAIN) == [1e-3, 10.0]
    assert scale["scheme"] == "yelloworangered"
    data = cells(spec)
    assert data[0]["kl"] == 0.0 and data[0]["colour"] == 1e-3  # 0 drawn at the floor
    assert all(d["colour"] >= 1e-3 for d in data)
    assert "log" in rect(spec)["encoding"]["color"]["title"]
    assert charts.chart_bytes(charts.sweep_heatmap(result, scale="log"), "svg").startswith(b"<svg")
    with pytest.raises(ValueError, match="scale"):
        charts.sweep_heatmap(result, scale="sqrt")


def test_sweep_subtitle_says_when_clamped() -> None:
    low = json.dumps(charts.chart_spec(charts.sweep_heatmap(make_sweep(scale=0.5)))["title"])
    high = json.dumps(charts.chart_spec(charts.sweep_heatmap(make_sweep(scale=9.0)))["title"])
    assert "clamped" not in low and "clamped at 2 nats" in high
    assert "skip" in low and "5 prompt positions" in low and "9 of 30 blocks" in low


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_sweep_bad_kl_max(bad: float) -> None:
    with pytest.raises(ValueError, match="kl_max"):
        charts.sweep_heatmap(make_sweep(), kl_max=bad)


def test_sweep_nan_and_inf_are_null() -> None:
    result = make_sweep()
    result.kl[0, 0], result.kl[1, 1] = np.nan, np.inf
    spec = charts.chart_spec(charts.sweep_heatmap(result))
    data = cells(spec)
    assert data[0]["kl"] is None
    json.dumps(spec, allow_nan=False)  # valid JSON for the browser


def test_sweep_large_grid() -> None:
    result = make_sweep(layers=list(range(30)), g=64, changed=None)
    spec = charts.chart_spec(charts.sweep_heatmap(result))
    enc = rect(spec)["encoding"]
    assert len(enc["x"]["scale"]["domain"]) == 64
    assert enc["y"]["scale"]["domain"][-1] == 0
    assert spec["width"] <= 64 * 20 and spec["height"] <= 30 * 26
    assert charts.chart_bytes(charts.sweep_heatmap(result), "svg").startswith(b"<svg")


def test_sweep_single_cell() -> None:
    result = make_sweep(layers=[4], g=1, changed=None)
    spec = charts.chart_spec(charts.sweep_heatmap(result))
    assert rect(spec)["encoding"]["x"]["scale"]["domain"] == ["Gen0 \u00b7 The"]
    assert rect(spec)["encoding"]["y"]["scale"]["domain"] == [4]


@pytest.mark.parametrize("n_blocks", [1, 2, 4])
def test_small_sweep_keeps_room_for_axis_title_and_legend(n_blocks: int) -> None:
    """1-4 blocks at 26 px per row would give a 26-104 px plot under a 120 px legend
    (overlapping the x-axis title, cutting the y-axis title): the plot is at least
    MIN_PLOT_HEIGHT px tall."""
    result = make_sweep(layers=list(range(n_blocks)), changed=None)
    spec = charts.chart_spec(charts.sweep_heatmap(result))
    assert spec["height"] >= charts.MIN_PLOT_HEIGHT
    legend = rect(spec)["encoding"]["color"]["legend"]
    assert legend["gradientLength"] + 24 <= spec["height"]  # title + gradient beside the plot


@pytest.mark.parametrize("g", [40, 64])
def test_generation_charts_fit_a_column(g: int) -> None:
    """Up to 64 generated tokens: the cells stay within GEN_CELLS_BUDGET px."""
    spec = charts.chart_spec(charts.sweep_heatmap(make_sweep(g=g, changed=None)))
    assert spec["width"] <= charts.GEN_CELLS_BUDGET
    result = make_result(tokens=[f"t{i}" for i in range(10 + g)])
    gen = charts.chart_spec(charts.generation_lens_heatmap(result, 10))
    assert gen["width"] <= charts.GEN_CELLS_BUDGET


def test_sweep_exports(tmp_path) -> None:
    chart = charts.sweep_heatmap(make_sweep())
    png = charts.save_chart(chart, tmp_path / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    svg = charts.chart_bytes(chart, "svg").decode()
    assert svg.lstrip().startswith("<svg")
    assert "Gen3 \u00b7 \u2423Australia" in svg
    assert "<script>" not in svg  # the hostile token is escaped text
    html = charts.chart_bytes(chart, "html").decode()
    assert "<html" in html.lower() and "cdn.jsdelivr" not in html


# --- lens on the generated tokens ------------------------------------------------------------


def test_generation_lens_columns() -> None:
    lens = make_result(target=False)  # 14 tokens: pretend the first 9 are the prompt
    spec = charts.chart_spec(charts.generation_lens_heatmap(lens, 9, "entropy"))
    enc = rect(spec)["encoding"]
    labels = enc["x"]["scale"]["domain"]
    assert len(labels) == 14 - 9
    assert labels[0].startswith("Gen0 \u00b7 <|im_en") and labels[1] == "Gen1 \u00b7 \u21b5"
    # column Gen j is the position that predicts it: position n_prompt - 1 + j
    data = cells(spec)
    assert sorted({d["position"] for d in data}) == list(range(8, 13))
    assert all(d["gen_label"] == labels[d["position"] - 8] for d in data)
    # rows as in the lens view: emb at the bottom, out on top; fixed entropy domain
    assert enc["y"]["sort"][0] == "out" and enc["y"]["sort"][-1] == "emb"
    assert colour_scale(spec)["domain"] == pytest.approx([0.0, math.log(1000)])
    assert colour_scale(spec)["clamp"] is True


@pytest.mark.parametrize("metric", ["entropy", "kl_to_final", "top1_prob"])
def test_generation_lens_metrics(metric: str) -> None:
    spec = charts.chart_spec(charts.generation_lens_heatmap(make_result(), 10, metric))
    assert colour_scale(spec)["domain"] == pytest.approx(list(charts.METRICS[metric].domain(1000)))
    assert charts.METRICS[metric].title.split()[0] in json.dumps(spec["title"])


def test_generation_lens_errors() -> None:
    lens = make_result(target=False)
    with pytest.raises(ValueError, match="target"):
        charts.generation_lens_heatmap(lens, 9, "target_prob")
    with pytest.raises(ValueError, match="n_prompt"):
        charts.generation_lens_heatmap(lens, 0)
    with pytest.raises(ValueError, match="n_prompt"):
        charts.generation_lens_heatmap(lens, 15)
    with pytest.raises(ValueError, match="unknown metric"):
        charts.generation_lens_heatmap(lens, 9, "nope")


def test_generation_lens_export() -> None:
    chart = charts.generation_lens_heatmap(make_result(), 9)
    assert charts.chart_bytes(chart, "png")[:4] == b"\x89PNG"
    assert charts.chart_bytes(chart, "svg").startswith(b"<svg")


# --- layer x layer KL ------------------------------------------------------------------------


def pairwise(r: int = 7) -> tuple[list[str], np.ndarray]:
    names = ["emb", *(str(i) for i in range(1, r - 1)), "out"]
    kl = np.abs(np.subtract.outer(np.arange(r), np.arange(r))).astype(np.float32)
    return names, kl


def test_pairwise_encodings() -> None:
    names, kl = pairwise()
    spec = charts.chart_spec(charts.layer_pairwise_heatmap(names, kl, title="T", subtitle="S"))
    enc = rect(spec)["encoding"]
    assert enc["x"]["scale"]["domain"] == names  # emb on the left
    assert enc["y"]["scale"]["domain"] == names[::-1]  # emb at the bottom
    assert spec["width"] == spec["height"]  # square
    assert spec["title"]["text"] == "T" and spec["title"]["subtitle"] == "S"
    assert {t["field"] for t in enc["tooltip"]} == {"p", "q", "kl"}
    data = cells(spec)
    assert len(data) == len(names) ** 2
    cell = next(d for d in data if d["p"] == "out" and d["q"] == "emb")
    assert cell["kl"] == pytest.approx(float(kl[-1, 0]))


def test_pairwise_domain() -> None:
    names, kl = pairwise()
    default = colour_scale(charts.chart_spec(charts.layer_pairwise_heatmap(names, kl)))
    assert default["domain"] == [0.0, charts.PAIRWISE_KL_MAX] and default["clamp"] is True
    scaled = charts.chart_spec(charts.layer_pairwise_heatmap(names, kl * 100, vocab_size=49152))
    assert colour_scale(scaled)["domain"] == pytest.approx([0.0, math.log(49152)])
    explicit = charts.chart_spec(charts.layer_pairwise_heatmap(names, kl, kl_max=3))
    assert colour_scale(explicit)["domain"] == [0.0, 3.0]


def test_pairwise_bad_input() -> None:
    names, kl = pairwise()
    with pytest.raises(ValueError, match="shape"):
        charts.layer_pairwise_heatmap(names[:-1], kl)
    with pytest.raises(ValueError, match="unique"):
        charts.layer_pairwise_heatmap(["a"] * len(names), kl)
    with pytest.raises(ValueError, match="kl_max"):
        charts.layer_pairwise_heatmap(names, kl, kl_max=0)


def test_pairwise_large_and_export(tmp_path) -> None:
    names, kl = pairwise(31)
    kl[0, 1] = np.inf
    chart = charts.layer_pairwise_heatmap(names, kl, vocab_size=49152)
    spec = charts.chart_spec(chart)
    json.dumps(spec, allow_nan=False)
    axis = rect(spec)["encoding"]["y"]["axis"]
    assert {"emb", "out", "5"} <= set(axis.get("values", names))
    assert charts.save_chart(chart, tmp_path / "pair.png").read_bytes()[:4] == b"\x89PNG"
    assert charts.save_chart(chart, tmp_path / "pair.svg").read_text().lstrip().startswith("<svg")
