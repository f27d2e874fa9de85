"""Altair charts of lenskit's results, shared by the Streamlit app and the CLI.

Every builder is a pure function ``result -> alt.Chart``: no Streamlit, no tensors; the data
are pandas DataFrames (Streamlit ships them as Arrow).

* :mod:`~lenskit.charts.theme`: sizes, colours, number formats and wording every chart shares.
* :mod:`~lenskit.charts.metrics`: the colour metrics, one :class:`Metric` entry each.
* :mod:`~lenskit.charts.marks`: the Altair pieces every chart shares (title, legend, look).
* :mod:`~lenskit.charts.lens`: the lens heatmap (overview and labelled detail view).
* :mod:`~lenskit.charts.drilldown`: one position across the rows (table and line chart).
* :mod:`~lenskit.charts.sweep`: intervention sweep, lens on the generated tokens, layer x
  layer KL.
* :mod:`~lenskit.charts.dataset`: a dataset run's statistics (per category too) and its
  causal check (KL, answer flips, read vs cause).
* :mod:`~lenskit.charts.export`: the spec with its data inlined; PNG, SVG, HTML offline.
"""

from lenskit.charts.dataset import (
    STAT_TITLES,
    dataset_category_heatmaps,
    dataset_flip_chart,
    dataset_heatmap,
    dataset_sweep_heatmap,
    read_vs_cause_chart,
    stat_scale,
)
from lenskit.charts.drilldown import position_drilldown_chart, position_table
from lenskit.charts.export import chart_bytes, chart_spec, iter_layers, save_chart
from lenskit.charts.fidelity import fidelity_chart
from lenskit.charts.lens import default_detail_range, lens_heatmap, selected_positions
from lenskit.charts.metrics import (
    METRICS,
    Metric,
    generation_metric_names,
    get_metric,
    metric_help,
    metric_names,
    metric_values,
    register_metric,
)
from lenskit.charts.sweep import (
    PAIRWISE_KL_MAX,
    SWEEP_KL_MAX,
    SWEEP_LOG_DOMAIN,
    SWEEP_SCHEME,
    band_layers,
    gen_labels,
    generation_lens_heatmap,
    layer_pairwise_heatmap,
    sweep_heatmap,
)
from lenskit.charts.theme import (
    DEFAULT_DETAIL_WIDTH,
    DETAIL_CELLS_BUDGET,
    DETAIL_MAX_CELL,
    DETAIL_MAX_POSITIONS,
    DETAIL_MIN_CELL,
    DETAIL_TITLE_LIMIT,
    GEN_CELLS_BUDGET,
    HIGHLIGHT_COLOR,
    HIGHLIGHT_DASH,
    MIN_PLOT_HEIGHT,
    PROB_FLOOR,
    PROB_FORMAT,
    PROB_PRINTF,
    RANK_CONVENTION,
    TEMPLATE_COLOR,
    TOOLTIP_TOP_K,
    compact_ranges,
    describe_range,
    display_rank,
    format_prob,
    lens_title,
)

__all__ = [
    "DEFAULT_DETAIL_WIDTH",
    "DETAIL_CELLS_BUDGET",
    "DETAIL_MAX_CELL",
    "DETAIL_MAX_POSITIONS",
    "DETAIL_MIN_CELL",
    "DETAIL_TITLE_LIMIT",
    "GEN_CELLS_BUDGET",
    "HIGHLIGHT_COLOR",
    "HIGHLIGHT_DASH",
    "METRICS",
    "MIN_PLOT_HEIGHT",
    "Metric",
    "PAIRWISE_KL_MAX",
    "PROB_FLOOR",
    "PROB_FORMAT",
    "PROB_PRINTF",
    "RANK_CONVENTION",
    "SWEEP_KL_MAX",
    "SWEEP_LOG_DOMAIN",
    "STAT_TITLES",
    "SWEEP_SCHEME",
    "TEMPLATE_COLOR",
    "TOOLTIP_TOP_K",
    "band_layers",
    "chart_bytes",
    "chart_spec",
    "compact_ranges",
    "dataset_category_heatmaps",
    "dataset_flip_chart",
    "dataset_heatmap",
    "dataset_sweep_heatmap",
    "default_detail_range",
    "fidelity_chart",
    "describe_range",
    "display_rank",
    "format_prob",
    "gen_labels",
    "generation_lens_heatmap",
    "generation_metric_names",
    "get_metric",
    "iter_layers",
    "layer_pairwise_heatmap",
    "lens_heatmap",
    "lens_title",
    "metric_help",
    "metric_names",
    "metric_values",
    "position_drilldown_chart",
    "position_table",
    "read_vs_cause_chart",
    "register_metric",
    "save_chart",
    "selected_positions",
    "stat_scale",
    "sweep_heatmap",
]
