"""The Metric registry: one entry per colour metric, the choices and help built from it, and
errors as lenskit.errors.InputError."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_charts import cell_layers, colour_scale, data_values, make_result

from lenskit import charts
from lenskit.charts import Metric
from lenskit.errors import InputError

#: The app's lens on the generated tokens offers these (no target there).
GENERATION_METRICS = ["entropy", "kl_to_final", "top1_prob"]


@pytest.fixture
def top2_metric():
    """A throwaway metric (the second-most-likely token's probability), registered for one
    test and removed afterwards."""
    metric = charts.register_metric(
        Metric(
            "top2_prob",
            "Top-2 probability",
            "probability",
            lambda result: result.top_probs[:, :, 1],
            help="probability of each row's second most likely token",
            tooltip="top-2 probability",
        )
    )
    try:
        yield metric
    finally:
        charts.METRICS.pop("top2_prob", None)


def test_choices_come_from_the_registry() -> None:
    assert charts.metric_names() == ["entropy", "kl_to_final", "top1_prob", "target_prob"]
    assert charts.metric_names() == list(charts.METRICS)
    assert charts.generation_metric_names() == GENERATION_METRICS
    assert [k for k in charts.metric_names() if charts.get_metric(k).needs_target] == [
        "target_prob"
    ]


def test_metric_help_names_every_metric() -> None:
    text = charts.metric_help(target_hint="needs --target")
    for key, metric in charts.METRICS.items():
        assert key in text and metric.help in text
    assert "entropy (default)" in text
    assert "target_prob (needs --target)" in text
    assert "(default)" not in charts.metric_help(default=None)


def test_metric_values_is_a_lookup() -> None:
    """Each built-in metric reads its values from its entry (a field name or a callable)."""
    result = make_result()
    expected = {
        "entropy": result.entropy,
        "kl_to_final": result.kl_to_final,
        "top1_prob": result.top_probs[:, :, 0],
        "target_prob": result.target_prob,
    }
    for key, values in expected.items():
        np.testing.assert_array_equal(charts.metric_values(result, key), values)
        np.testing.assert_array_equal(charts.METRICS[key].read(result), values)
    # a Metric object works as well as its name
    np.testing.assert_array_equal(
        charts.metric_values(result, charts.METRICS["entropy"]), result.entropy
    )


def test_errors_are_input_errors() -> None:
    result = make_result(target=False)
    with pytest.raises(InputError, match="unknown metric 'nope'; known: entropy, kl_to_final"):
        charts.metric_values(result, "nope")
    with pytest.raises(InputError, match="needs a target token"):
        charts.metric_values(result, "target_prob")
    with pytest.raises(InputError, match="unknown metric"):
        charts.lens_heatmap(result, "nope")
    with pytest.raises(InputError, match="positions"):
        charts.lens_heatmap(result, positions=[0, 99])
    with pytest.raises(InputError, match="position"):
        charts.position_drilldown_chart(result, 99)
    with pytest.raises(InputError, match="n_prompt"):
        charts.generation_lens_heatmap(result, 0)
    with pytest.raises(InputError, match="format"):
        charts.chart_bytes(charts.lens_heatmap(result), "gif")
    assert issubclass(InputError, ValueError)


def test_a_new_metric_is_one_entry(top2_metric: Metric) -> None:
    """Registered once, a metric is a choice everywhere: values, lens heatmap (legend, value
    tooltip, its own tooltip line when another metric is coloured), generation view, help."""
    result = make_result()
    assert charts.get_metric("top2_prob") is top2_metric
    assert charts.metric_names()[-1] == "top2_prob"
    assert "top2_prob" in charts.generation_metric_names()
    assert "top2_prob: probability of each row's second" in charts.metric_help()
    np.testing.assert_array_equal(
        charts.metric_values(result, "top2_prob"), result.top_probs[:, :, 1]
    )

    spec = charts.chart_spec(charts.lens_heatmap(result, "top2_prob", positions=range(10, 14)))
    cells = cell_layers(spec)[0]["encoding"]
    assert cells["color"]["title"] == "Top-2 probability"
    assert colour_scale(spec)["domain"] == [0.0, 1.0]
    value = next(t for t in cells["tooltip"] if t["field"] == "value")
    assert value["title"] == "Top-2 probability" and value["format"] == charts.PROB_FORMAT
    np.testing.assert_allclose(
        [v["value"] for v in data_values(spec) if v["position"] == 13],
        result.top_probs[:, 13, 1],
        rtol=1e-6,
    )
    assert spec["title"]["text"].endswith(": Top-2 probability")

    by_entropy = charts.chart_spec(charts.lens_heatmap(result, positions=range(10, 14)))
    tips = cell_layers(by_entropy)[0]["encoding"]["tooltip"]
    line = next(t for t in tips if t["field"] == "top2_prob")
    assert line["title"] == "top-2 probability" and line["format"] == charts.PROB_FORMAT

    gen = charts.chart_spec(charts.generation_lens_heatmap(result, 10, "top2_prob"))
    assert "Top-2 probability" in json.dumps(gen["title"])
    gen_tips = [t["field"] for t in cell_layers(gen)[0]["encoding"]["tooltip"]]
    assert "top2_prob" in gen_tips


def test_a_removed_metric_is_gone(top2_metric: Metric) -> None:
    charts.METRICS.pop(top2_metric.key)
    assert "top2_prob" not in charts.metric_names()
    with pytest.raises(InputError, match="unknown metric"):
        charts.metric_values(make_result(), "top2_prob")


def test_field_name_metric_and_unavailable_values() -> None:
    """``values`` may name a result field; a field that is None is "not available"."""
    metric = Metric("kl_again", "KL again", "nats", "kl_to_final", log_domain_max=True)
    result = make_result()
    np.testing.assert_array_equal(charts.metric_values(result, metric), result.kl_to_final)
    missing = Metric("nothing", "Nothing", "nats", lambda result: None)
    with pytest.raises(InputError, match="'nothing' is not available"):
        charts.metric_values(result, missing)


def test_register_metric_refuses_taken_and_reserved_names() -> None:
    with pytest.raises(InputError, match="already registered"):
        charts.register_metric(charts.METRICS["entropy"])
    with pytest.raises(InputError, match="reserved"):
        charts.register_metric(Metric("value", "Value", "nats", "entropy"))
    assert charts.metric_names() == ["entropy", "kl_to_final", "top1_prob", "target_prob"]


def test_builtin_metric_names_are_not_data_columns() -> None:
    """Metric keys double as data columns of the detail view: none may shadow a chart's own."""
    from lenskit.charts.metrics import RESERVED_COLUMNS

    assert not set(charts.METRICS) & RESERVED_COLUMNS
