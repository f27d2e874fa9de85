"""Download buttons: results as CSV / JSON, charts as PNG / SVG / HTML.

Every file is made when its button is clicked (``data`` is a callable), not on every rerun.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from lenskit import charts

__all__ = ["chart_downloads", "data_downloads"]

_CHART_FORMATS = (("png", "image/png"), ("svg", "image/svg+xml"), ("html", "text/html"))


def chart_downloads(label: str, chart: Any, stem: str) -> None:
    """``<label> .png``, ``.svg`` and ``.html`` buttons side by side (``stem``.png ...)."""
    for col, (fmt, mime) in zip(st.columns(len(_CHART_FORMATS)), _CHART_FORMATS, strict=True):
        col.download_button(
            f"{label} .{fmt}",
            data=lambda fmt=fmt: charts.chart_bytes(chart, fmt),
            file_name=f"{stem}.{fmt}",
            mime=mime,
            on_click="ignore",
            key=f"dl_{stem}_{fmt}",
            width="stretch",
        )


def data_downloads(result: Any, label: str, *, stem: str, key: str) -> None:
    """``<label> as CSV`` and ``<label> as JSON`` buttons (``stem``.csv / .json) for a result
    with ``to_frame()`` and ``to_json()``."""
    col_csv, col_json = st.columns(2)
    col_csv.download_button(
        f"{label} as CSV",
        data=lambda: result.to_frame().to_csv(index=False),
        file_name=f"{stem}.csv",
        mime="text/csv",
        on_click="ignore",
        key=f"{key}_csv",
        width="stretch",
    )
    col_json.download_button(
        f"{label} as JSON",
        data=result.to_json,
        file_name=f"{stem}.json",
        mime="application/json",
        on_click="ignore",
        key=f"{key}_json",
        width="stretch",
    )
