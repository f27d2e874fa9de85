"""fidelity_chart on synthetic FidelityReports: layout, fixed scales, lenses side by side."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lenskit import InputError
from lenskit.charts import fidelity_chart
from lenskit.charts.fidelity import FIDELITY_REGION_TITLES
from lenskit.lens.fidelity import FidelityReport


def make_report(lenses=("logit",), n_layers: int = 4, seed: int = 0, n=(12, 30)):
    rng = np.random.default_rng(seed)
    r = n_layers + 1
    kl = rng.uniform(0, 6, (len(lenses), 2, r))
    kl[..., -1] = 0.0
    agree = rng.uniform(0, 1, (len(lenses), 2, r))
    agree[..., -1] = 1.0
    return FidelityReport(
        layer_names=["emb", *[str(i) for i in range(1, n_layers)], "out"],
        lenses=list(lenses),
        mean_kl=kl,
        top1_agreement=agree,
        n=list(n),
        n_transcripts=5,
        model_name="synthetic",
    )


def panels(spec: dict) -> list[dict]:
    return spec["vconcat"]


def cell_values(spec: dict, panel: dict) -> list[dict]:
    data = panel.get("data") or spec["data"]  # both panels share one data set
    return spec["datasets"][data["name"]]


def test_two_panels_faceted_by_region_with_fixed_scales():
    report = make_report(("logit", "tuned"))
    spec = fidelity_chart(report).to_dict()
    kl_panel, agree_panel = panels(spec)
    for panel in (kl_panel, agree_panel):
        column = panel["facet"]["column"]
        assert column["field"] == "region_title"
        assert column["sort"] == [
            FIDELITY_REGION_TITLES["template"],
            FIDELITY_REGION_TITLES["user"],
        ]
        enc = panel["spec"]["encoding"]
        assert enc["x"]["sort"] == ["emb", "1", "2", "3", "out"]
        assert enc["color"]["field"] == "lens" and enc["color"]["sort"] == ["logit", "tuned"]
        assert len(cell_values(spec, panel)) == 2 * 2 * 5  # lenses x regions x rows
    assert kl_panel["spec"]["encoding"]["y"]["field"] == "mean_kl"
    assert kl_panel["spec"]["encoding"]["y"]["scale"]["domain"] == pytest.approx(
        [0.0, report.mean_kl.max()]
    )
    assert agree_panel["spec"]["encoding"]["y"]["field"] == "top1_agreement"
    assert agree_panel["spec"]["encoding"]["y"]["scale"]["domain"] == [0.0, 1.0]
    title = spec["title"]
    assert "logit, tuned" in title["text"]
    assert "5 transcripts" in title["subtitle"] and "12 template positions" in title["subtitle"]


def test_a_list_of_reports_is_put_side_by_side():
    spec = fidelity_chart([make_report(("logit",)), make_report(("tuned",), seed=1)]).to_dict()
    panel = panels(spec)[0]
    assert {v["lens"] for v in cell_values(spec, panel)} == {"logit", "tuned"}
    with pytest.raises(InputError, match="other rows or other transcripts"):
        fidelity_chart([make_report(), make_report(n_layers=6)])
    with pytest.raises(InputError, match="FidelityReport"):
        fidelity_chart("logit")


def test_an_empty_region_gives_valid_json():
    report = make_report(n=(0, 30))
    report.mean_kl[:, 0] = np.nan
    report.top1_agreement[:, 0] = np.nan
    spec = fidelity_chart(report).to_dict()
    text = json.dumps(spec, allow_nan=False)  # NaN would not be valid JSON for Vega
    values = cell_values(spec, panels(spec)[0])
    assert {v["region"] for v in values} == {"user"} and len(values) == 5
    assert "0 template positions" in text
