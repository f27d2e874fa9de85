"""Chart files, offline: the Vega-Lite spec with its data inlined, PNG, SVG and standalone HTML.

:func:`chart_spec` inlines a chart's DataFrames without touching Altair's global data
transformers or its 5,000-row limit. :func:`chart_bytes` / :func:`save_chart` render PNG and
SVG with ``vl_convert`` and write HTML with the Vega, Vega-Lite and vega-embed JavaScript
inlined, so every file opens without network access.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from lenskit.errors import InputError

__all__ = ["chart_bytes", "chart_spec", "iter_layers", "save_chart"]

#: File formats :func:`chart_bytes` and :func:`save_chart` write.
_FORMATS = ("png", "svg", "html", "json")
_COMPOSITES = ("layer", "hconcat", "vconcat", "concat")


def _vl_version() -> str | None:
    """Altair's Vega-Lite version if vl-convert bundles it (else vl-convert's default)."""
    import vl_convert as vlc

    major_minor = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    return major_minor if major_minor in vlc.get_vegalite_versions() else None


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-safe records: native Python scalars, NaN/inf as null."""
    clean = frame.replace([np.inf, -np.inf], np.nan).astype(object)
    clean = clean.where(clean.notna(), None)
    return clean.to_dict(orient="records")


def chart_spec(chart: Any) -> dict[str, Any]:
    """The chart's Vega-Lite spec as a plain dict, its data inlined under ``datasets``.

    Touches no global Altair state (data transformers, row limits): each DataFrame is
    swapped for a named data reference on a copy of the chart, and the rows are added as
    JSON-safe records (NaN/inf as null) after validation, which stays fast for large grids.
    """
    chart = chart.copy(deep=True)
    datasets: dict[str, list[dict[str, Any]]] = {}

    def swap(obj: Any) -> None:
        data = obj._get("data") if hasattr(obj, "_get") else alt.Undefined
        if isinstance(data, pd.DataFrame):
            name = f"lenskit-data-{len(datasets)}"
            datasets[name] = _records(data)
            obj.data = alt.NamedData(name=name)
        for key in _COMPOSITES:
            children = obj._get(key) if hasattr(obj, "_get") else alt.Undefined
            if isinstance(children, list):
                for child in children:
                    swap(child)

    swap(chart)
    spec = chart.to_dict()
    spec.setdefault("datasets", {}).update(datasets)
    return spec


def iter_layers(spec: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """A spec dict (:func:`chart_spec`) and every view nested in it (layers, concatenations),
    depth first: for finding a mark, encoding or dataset in a composed chart."""
    yield spec
    for key in _COMPOSITES:
        for child in spec.get(key, []) or []:
            yield from iter_layers(child)


def chart_bytes(chart: Any, fmt: str, *, scale: float = 2.0) -> bytes:
    """Render a chart to bytes, offline.

    Args:
        chart: an Altair chart.
        fmt: "png" (rendered at ``scale`` x), "svg", "html" (standalone: Vega, Vega-Lite and
            vega-embed are inlined, so it opens without network access) or "json" (the
            Vega-Lite spec).
        scale: PNG pixel scale.
    """
    import vl_convert as vlc

    fmt = fmt.lower().lstrip(".")
    if fmt not in _FORMATS:
        raise InputError(f"unknown chart format {fmt!r}; known: {_FORMATS}")
    spec = chart_spec(chart)
    if fmt == "json":
        return json.dumps(spec, indent=1).encode()
    version = _vl_version()
    if fmt == "png":
        return bytes(vlc.vegalite_to_png(spec, vl_version=version, scale=scale))
    if fmt == "svg":
        return vlc.vegalite_to_svg(spec, vl_version=version).encode()
    return vlc.vegalite_to_html(spec, vl_version=version, bundle=True).encode()


def save_chart(chart: Any, path: str | Path, *, scale: float = 2.0) -> Path:
    """Write a chart to ``path``; the format comes from the suffix (.png, .svg, .html, .json).

    PNG and SVG are rendered offline by vl-convert; HTML is standalone (all JavaScript
    inlined, no CDN). Returns the path.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in _FORMATS:
        raise InputError(f"cannot tell the chart format from {path.name!r}; use one of {_FORMATS}")
    data = chart_bytes(chart, fmt, scale=scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
