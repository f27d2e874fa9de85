"""The fidelity chart of a :class:`~lenskit.lens.fidelity.FidelityReport`.

:func:`fidelity_chart` draws, per read-out row (x, ``emb`` on the left, ``out`` on the right),
the mean KL(out || row) (top) and the top-1 agreement with row "out" (bottom), one line per
lens, the template's tokens and the user's text side by side (columns). Scales are fixed:
agreement on [0, 1], KL on [0, the largest mean] (so template and user text compare at a
glance), both shared by the two regions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import altair as alt
import numpy as np

from lenskit.charts.marks import chart_title, configure
from lenskit.charts.theme import count_noun
from lenskit.errors import InputError
from lenskit.lens.fidelity import FIDELITY_REGIONS, FidelityReport, compare_fidelity

__all__ = ["FIDELITY_REGION_TITLES", "fidelity_chart"]

#: Column titles of the regions.
FIDELITY_REGION_TITLES = {"template": "chat-template tokens", "user": "the user's text"}

_METRICS = (
    ("mean_kl", "mean KL(out \u2016 row) (nats)", ".3f"),
    ("top1_agreement", "top-1 agreement with out", ".1%"),
)


def _report(reports: FidelityReport | Sequence[FidelityReport]) -> FidelityReport:
    if isinstance(reports, FidelityReport):
        return reports
    if isinstance(reports, Sequence) and not isinstance(reports, str):
        return compare_fidelity(reports)
    raise InputError(
        f"fidelity_chart needs a FidelityReport or a list of them, got {type(reports).__name__}"
    )


def _panel(frame: Any, report: FidelityReport, metric: str, title: str, fmt: str) -> alt.Chart:
    """One metric: rows on x, one line per lens, a column per region."""
    rows = [str(n) for n in report.layer_names]
    if metric == "top1_agreement":
        domain = [0.0, 1.0]
    else:
        top = float(np.nanmax(report.mean_kl, initial=0.0))
        domain = [0.0, top if top > 0 else 1.0]
    tooltip = [
        alt.Tooltip("lens:N", title="lens"),
        alt.Tooltip("region_title:N", title="region"),
        alt.Tooltip("row:N", title="row"),
        alt.Tooltip("mean_kl:Q", title=_METRICS[0][1], format=_METRICS[0][2]),
        alt.Tooltip("top1_agreement:Q", title=_METRICS[1][1], format=_METRICS[1][2]),
        alt.Tooltip("n:Q", title="positions (n)"),
    ]
    many = len(rows) > 24
    ticks = list(dict.fromkeys([*rows[:: -(-len(rows) // 12)], rows[-1]]))  # about 12 labels
    x_axis = alt.Axis(labelAngle=0, values=ticks)
    base = (
        alt.Chart(frame)
        .mark_line(point=alt.OverlayMarkDef(size=25 if many else 40), strokeWidth=1.5)
        .encode(
            x=alt.X("row:O", sort=rows, title="read-out row", axis=x_axis),
            y=alt.Y(f"{metric}:Q", title=title, scale=alt.Scale(domain=domain, nice=False)),
            color=alt.Color("lens:N", title="lens", sort=report.lenses.tolist()),
            tooltip=tooltip,
        )
        .properties(width=max(220, min(520, 14 * len(rows))), height=170)
    )
    order = [FIDELITY_REGION_TITLES[r] for r in FIDELITY_REGIONS]
    return base.facet(
        column=alt.Column(
            "region_title:N", sort=order, title=None, header=alt.Header(labelFontSize=12)
        )
    )


def fidelity_chart(reports: FidelityReport | Sequence[FidelityReport]) -> alt.VConcatChart:
    """Per row, mean KL(out || row) and top-1 agreement with row "out" for each lens, the
    template's tokens and the user's text side by side.

    Args:
        reports: a :class:`~lenskit.lens.fidelity.FidelityReport` (it may hold several
            lenses) or a list of them (of the same model and transcripts, put side by side by
            :func:`~lenskit.lens.fidelity.compare_fidelity`).

    Returns:
        Two faceted line charts stacked (KL on top, agreement below) with fixed y scales.

    Raises:
        lenskit.InputError: not reports, or reports of other rows or transcripts.
    """
    report = _report(reports)
    frame = report.to_frame()
    frame["region_title"] = frame["region"].map(FIDELITY_REGION_TITLES)
    # A region without positions has NaN means: no points (and valid JSON for Vega).
    frame = frame.dropna(subset=["mean_kl", "top1_agreement"]).reset_index(drop=True)
    panels = [_panel(frame, report, metric, title, fmt) for metric, title, fmt in _METRICS]
    n_template, n_user = (int(v) for v in report.n)
    lenses = ", ".join(report.lenses.tolist())
    chart = alt.vconcat(*panels).properties(
        title=chart_title(
            f"Lens fidelity: {lenses}",
            f"{report.model_name or 'model'} \u00b7 "
            f"{count_noun(report.n_transcripts, 'transcript')} \u00b7 "
            f"{count_noun(n_template, 'template position')}, "
            f"{count_noun(n_user, 'user-text position')} \u00b7 reference: row out",
        )
    )
    return configure(chart)
