"""The Altair pieces every chart shares: title, colour legend, cell text and the common look."""

from __future__ import annotations

from typing import Any

import altair as alt

#: Default font of every chart (present in the exports' renderer and the browser alike).
FONT = "DejaVu Sans"


def chart_title(text: str, subtitle: str, **kwargs: Any) -> alt.TitleParams:
    """The heatmaps' title: left-aligned, grey subtitle."""
    return alt.TitleParams(
        text=text,
        subtitle=subtitle,
        anchor="start",
        fontSize=14,
        subtitleFontSize=11,
        subtitleColor="#555",
        **kwargs,
    )


def colour_legend(height: int, **kwargs: Any) -> alt.Legend:
    """A vertical colour legend on the right: title and gradient as tall as the plot where it
    is 84 px or more (the gradient: 60..300 px; a taller gradient than the plot runs into the
    x-axis title)."""
    return alt.Legend(orient="right", gradientLength=max(60, min(height - 24, 300)), **kwargs)


def cell_text(base: alt.Chart, x: Any, y: Any, tooltip: list[Any], **mark: Any) -> alt.Chart:
    """Each cell's ``label`` field as text, white on dark cells (``dark`` field)."""
    return base.mark_text(baseline="middle", **mark).encode(
        x=x,
        y=y,
        text="label:N",
        color=alt.condition("datum.dark", alt.value("white"), alt.value("#111")),
        tooltip=tooltip,
    )


def configure(chart: Any) -> Any:
    """The look every chart shares: no view border or axis domain line, one font."""
    return (
        chart.configure_view(stroke=None)
        .configure_axis(domain=False, labelFont=FONT, titleFont=FONT)
        .configure_legend(labelFont=FONT, titleFont=FONT, titleLimit=300)
        .configure_title(font=FONT, subtitleFont=FONT)
        .configure_text(font=FONT)
    )
