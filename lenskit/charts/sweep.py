"""Charts of the generation and its interventions: sweep, lens on the generated tokens, layer x
layer KL.

* :func:`sweep_heatmap`: an intervention sweep's KL, swept blocks (y) x generated tokens (x).
* :func:`generation_lens_heatmap`: the lens on the generated tokens, same columns.
* :func:`layer_pairwise_heatmap`: KL between every pair of read-out rows at one position.

Same conventions as the lens view: the first layer at the bottom, fixed colour domains (values
outside are clamped), data as DataFrames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from lenskit.charts.lens import (
    cell_frame,
    metric_colour,
    metric_tooltips,
    scale_note_tooltip,
    top_k_tooltip,
)
from lenskit.charts.marks import cell_text, chart_title, colour_legend, configure
from lenskit.charts.metrics import get_metric
from lenskit.charts.theme import (
    GEN_CELLS_BUDGET,
    MIN_PLOT_HEIGHT,
    PROB_FORMAT,
    count_noun,
    lens_title,
    row_axis_values,
    shown,
)
from lenskit.errors import InputError
from lenskit.results import GenerationLens, LensResult, PairwiseKL, SweepResult
from lenskit.text.tokens import format_token

__all__ = [
    "PAIRWISE_KL_MAX",
    "SWEEP_KL_MAX",
    "SWEEP_LOG_DOMAIN",
    "SWEEP_SCHEME",
    "band_layers",
    "gen_labels",
    "generation_lens_heatmap",
    "layer_pairwise_heatmap",
    "sweep_heatmap",
]

#: Colour domain of :func:`sweep_heatmap`: 0 .. 2 nats, fixed so that two sweeps (prompts,
#: interventions, models) compare by colour. Two nats is where a next-token distribution has
#: clearly moved (the seed figure's values run 0.2 .. 1.4); larger KLs are drawn in the
#: darkest red (the scale is clamped) and the tooltip gives the exact value.
SWEEP_KL_MAX = 2.0
#: Log colour scale of :func:`sweep_heatmap` (``scale="log"``): 0.001 .. 10 nats, fixed and
#: clamped, for sweeps whose effects span orders of magnitude (real models: most cells
#: 0.001 .. 0.1 nats, a few above 5); KL below 0.001 (including 0) gets the lightest colour.
SWEEP_LOG_DOMAIN = (1e-3, 10.0)
#: Colour scheme of :func:`sweep_heatmap`: light yellow = no effect, dark red = large KL.
SWEEP_SCHEME = "yelloworangered"
#: Colour domain upper end of :func:`layer_pairwise_heatmap` when no vocabulary size is given
#: (with one, ln V: the domain of the lens view's KL(out || layer)).
PAIRWISE_KL_MAX = 10.0


def band_layers(n_blocks: int) -> list[int]:
    """The quick layer pick: first block, a middle band and a late block.

    Blocks ``0``, ``floor(L/2) .. floor(0.7 L)`` and ``floor(0.9 L)`` (0-based, duplicates
    dropped): for the 30-block default model that is 0, 15..21, 27, the seed figure's rows;
    for L = 3 it is 0, 1, 2.
    """
    n = int(n_blocks)
    if n < 1:
        return []
    picked = {0, *range(n // 2, int(0.7 * n) + 1), int(0.9 * n)}
    return sorted(b for b in picked if 0 <= b < n)


def gen_labels(
    tokens: Sequence[str], max_len: int = 10, *, byte_level: bool | None = None
) -> list[str]:
    """Column labels ``"Gen0 \u00b7 \u2423The"``: the index (unique) and the token (readable;
    ``tokens`` are vocabulary strings, ``byte_level`` as in :func:`format_token`)."""
    return [
        f"Gen{j} \u00b7 {format_token(str(t), max_len, byte_level=byte_level)}"
        for j, t in enumerate(tokens)
    ]


def _gen_x(labels: list[str], title: str, cell_width: int) -> alt.X:
    """The x encoding of the generated-token columns (``gen_label``, in generation order)."""
    axis = alt.Axis(
        labelAngle=0 if cell_width >= 80 else -40 if cell_width >= 24 else -90,
        labelAlign="center" if cell_width >= 80 else "right",
        labelFontSize=11 if len(labels) <= 24 else 9,
        labelLimit=120,
        labelOverlap=False,
        ticks=False,
    )
    return alt.X("gen_label:N", sort=labels, scale=alt.Scale(domain=labels), title=title, axis=axis)


def _gen_chart(layers: list[Any], width: int, height: int, title: alt.TitleParams) -> Any:
    """The generation views' layered chart: the plot ``width`` x ``height``, the axes, legend
    and title drawn around it."""
    chart = alt.layer(*layers).properties(
        width=width, height=height, title=title, autosize=alt.AutoSizeParams(type="pad")
    )
    return configure(chart)


# --- intervention sweep ----------------------------------------------------------------------


def _sweep_domain(scale: str, kl_max: float | None) -> tuple[bool, float, float]:
    """``(log, lo, hi)`` of the sweep's colour scale; InputError for a bad scale or kl_max."""
    if scale not in ("linear", "log"):
        raise InputError(f"scale must be 'linear' or 'log', got {scale!r}")
    log = scale == "log"
    lo = SWEEP_LOG_DOMAIN[0] if log else 0.0
    if kl_max is None:
        kl_max = SWEEP_LOG_DOMAIN[1] if log else SWEEP_KL_MAX
    hi = float(kl_max)
    if not hi > lo or not math.isfinite(hi):
        raise InputError(f"kl_max must be a number of nats above {lo:g}, got {kl_max!r}")
    return log, lo, hi


def _sweep_frame(result: Any, lo: float, hi: float, log: bool, max_label: int) -> pd.DataFrame:
    n_l, g = result.kl.shape
    li, gj = np.meshgrid(np.arange(n_l), np.arange(g), indexing="ij")
    li, gj = li.ravel(), gj.ravel()
    labels = gen_labels(result.generated_tokens, byte_level=result.byte_level)
    kl = result.kl.ravel().astype(np.float64)
    changed = result.top_ids_intervened.ravel() != result.generated_ids[gj]
    tops = result.top_tokens_intervened.ravel()
    colour = np.clip(np.nan_to_num(kl, nan=lo, posinf=hi), lo, hi)
    if log:
        norm = (np.log(colour) - math.log(lo)) / (math.log(hi) - math.log(lo))
    else:
        norm = (colour - lo) / (hi - lo)
    if max_label >= 3:
        text = [
            shown(result, s, max_label) if c else "" for s, c in zip(tops, changed, strict=True)
        ]
    else:
        text = ["\u2022" if c else "" for c in changed]
    return pd.DataFrame(
        {
            "layer": result.layers[li].astype(int),
            "gen": gj,
            "gen_label": [labels[j] for j in gj],
            "generated": [shown(result, result.generated_tokens[j], 16) for j in gj],
            "kl": kl,
            # what is coloured: KL itself on the linear scale; on the log scale the floor
            # stands in for 0 (log 0 is not drawable)
            "colour": np.where(np.isnan(kl), np.nan, np.maximum(kl, lo)) if log else kl,
            "top_intervened": [shown(result, s, 16) for s in tops],
            "changed": np.where(changed, "yes", "no"),
            "prob_clean": result.generated_prob_clean[gj].astype(np.float64),
            "prob_intervened": result.generated_prob_intervened.ravel().astype(np.float64),
            "label": text,
            "dark": norm > 0.6,  # dark orange / red cells: white text
        }
    )


def _positions_phrase(result: Any) -> str:
    n = int(result.positions.size)
    if n == 0:
        return "no prompt positions"
    if n == result.n_prompt:
        return f"all {n} prompt positions"
    listed = ", ".join(str(int(p)) for p in result.positions[:8])
    more = ", \u2026" if n > 8 else ""
    return f"{count_noun(n, 'prompt position')} ({listed}{more})"


def _sweep_y(layer_order: list[int], cell_height: int) -> alt.Y:
    """Swept blocks on y, block 0 at the bottom; thin rows label every 5th block and the ends."""
    axis: dict[str, Any] = {"labelFontSize": 10, "ticks": False}
    if cell_height < 12 and len(layer_order) > 16:
        axis["values"] = sorted(
            {layer_order[0], layer_order[-1], *(b for b in layer_order if b % 5 == 0)}
        )
    return alt.Y(
        "layer:O",
        sort=layer_order,
        scale=alt.Scale(domain=layer_order),
        title="intervened block",
        axis=alt.Axis(**axis),
    )


def _sweep_colour(log: bool, lo: float, hi: float, height: int) -> alt.Color:
    legend = {"values": [v for v in (1e-3, 1e-2, 0.1, 1.0, 10.0) if lo <= v <= hi]} if log else {}
    return alt.Color(
        "colour:Q",
        scale=alt.Scale(
            type="log" if log else "linear", domain=[lo, hi], scheme=SWEEP_SCHEME, clamp=True
        ),
        title=f"KL(clean \u2016 intervened) (nats{', log scale' if log else ''})",
        legend=colour_legend(height, **legend),
    )


_SWEEP_TOOLTIP = [
    alt.Tooltip("layer:O", title="intervened block"),
    alt.Tooltip("gen_label:N", title="generated"),
    alt.Tooltip("kl:Q", title="KL(clean || intervened) (nats)", format=".4f"),
    alt.Tooltip("top_intervened:N", title="top-1 under intervention"),
    alt.Tooltip("changed:N", title="top-1 changed"),
    alt.Tooltip("prob_clean:Q", title="p(generated), clean", format=PROB_FORMAT),
    alt.Tooltip("prob_intervened:Q", title="p(generated), intervened", format=PROB_FORMAT),
]


def _sweep_title(result: Any, kl_max: float) -> alt.TitleParams:
    """Title and subtitle: model, blocks swept, intervention and where, and the clamp."""
    n_blocks = result.num_blocks or "?"
    clamp_note = ""
    finite = result.kl[np.isfinite(result.kl)]
    if finite.size and float(finite.max()) > kl_max:
        clamp_note = f" \u00b7 colour clamped at {kl_max:g} nats (max {float(finite.max()):.2f})"
    of_blocks = count_noun(n_blocks, "block") if isinstance(n_blocks, int) else "? blocks"
    return chart_title(
        f"Intervention sweep: KL(clean \u2016 intervened), {result.intervention}",
        f"{result.model_name or 'model'} \u00b7 {len(result.layers)} of {of_blocks} \u00b7 "
        f"{result.intervention} at {_positions_phrase(result)}{clamp_note} \u00b7 "
        "text: the new top-1 where it changed",
    )


def sweep_heatmap(
    result: SweepResult,
    *,
    scale: str = "linear",
    kl_max: float | None = None,
    cell_width: int | None = None,
    cell_height: int | None = None,
) -> alt.LayerChart:
    """KL heatmap of an intervention sweep: swept blocks (y) x generated tokens (x).

    Cell ``(l, Gen j)`` is KL(p_clean || p_intervened) in nats of the next-token distribution
    that produced Gen j when block ``l`` was intervened on (see
    :func:`lenskit.interventions.intervention_sweep`). Block 0 is at the bottom (like ``emb``
    in the lens view), the columns are labelled ``"Gen0 \u00b7 \u2423The"``. Colour: scheme
    :data:`SWEEP_SCHEME` on a FIXED, clamped domain (larger values get the darkest red): by
    default linear ``0 .. 2`` nats (:data:`SWEEP_KL_MAX`; the seed figure's range), or with
    ``scale="log"`` logarithmic ``0.001 .. 10`` nats (:data:`SWEEP_LOG_DOMAIN`). Cells whose top-1
    token changed under the intervention show the new token (a dot when the cells are narrow).
    The tooltip gives the block, the generated token, the exact KL, the intervened top-1 token,
    whether it changed and the probability of the generated token clean vs intervened.

    Args:
        result: a :class:`~lenskit.results.SweepResult`.
        scale: "linear" (default) or "log".
        kl_max: upper end of the colour domain in nats (default: 2 linear, 10 log).
        cell_width, cell_height: pixels per cell (defaults depend on G and nL).
    """
    log, lo, kl_max = _sweep_domain(scale, kl_max)
    n_l, g = result.kl.shape
    if cell_width is None:
        cell_width = max(12, min(86, GEN_CELLS_BUDGET // max(g, 1)))
    if cell_height is None:
        cell_height = max(8, min(26, 620 // max(n_l, 1)))
    max_label = (cell_width - 6) // 7 if cell_height >= 14 else 0
    labels = gen_labels(result.generated_tokens, byte_level=result.byte_level)
    x = _gen_x(labels, "generated token (Gen j = the j-th answer token)", cell_width)
    y = _sweep_y([int(b) for b in result.layers[::-1]], cell_height)  # block 0 at the bottom
    height = max(cell_height * max(n_l, 1), MIN_PLOT_HEIGHT)
    base = alt.Chart(_sweep_frame(result, lo, kl_max, log, max_label))
    layers: list[Any] = [
        base.mark_rect(stroke="white", strokeWidth=0.5).encode(
            x=x, y=y, color=_sweep_colour(log, lo, kl_max, height), tooltip=_SWEEP_TOOLTIP
        )
    ]
    if n_l and g and cell_height >= 10:
        font = 10 if max_label else 12
        layers.append(
            cell_text(base, x, y, _SWEEP_TOOLTIP, fontSize=font, limit=max(cell_width - 2, 1))
        )
    return _gen_chart(layers, max(cell_width * g, 120), height, _sweep_title(result, kl_max))


# --- lens on the generated tokens ------------------------------------------------------------


def _generation_frame(result: LensResult, spec: Any, n_prompt: int) -> tuple[pd.DataFrame, list]:
    """The cells of columns Gen0..Gen{G-1} (position ``n_prompt - 1 + j``) and their labels."""
    g = result.n_positions - n_prompt
    pos = np.arange(n_prompt - 1, n_prompt - 1 + g, dtype=np.int64)
    frame = cell_frame(result, spec, pos, detail=True)
    gen_tokens = [str(result.tokens[n_prompt + j]) for j in range(g)]
    labels = gen_labels(gen_tokens, byte_level=result.byte_level)
    frame["gen_label"] = [labels[int(p) - (n_prompt - 1)] for p in frame["position"]]
    return frame, labels


def _generation_y(result: LensResult, cell_height: int) -> alt.Y:
    layer_order = [str(x) for x in result.layer_names[::-1]]
    axis: dict[str, Any] = {"labelFontSize": 10, "ticks": False}
    if cell_height < 12 and result.n_rows > 16:
        axis["values"] = row_axis_values(result.n_rows)
    return alt.Y("layer:N", sort=layer_order, title="layer (read-out)", axis=alt.Axis(**axis))


def generation_lens_heatmap(
    result: LensResult | GenerationLens,
    n_prompt: int | None = None,
    metric: str = "entropy",
    *,
    cell_width: int | None = None,
    cell_height: int | None = None,
) -> alt.LayerChart:
    """The lens on the generated tokens: read-out rows (y) x Gen0..Gen{G-1} (x).

    ``result`` covers prompt + generated tokens (:func:`lenskit.lens_on_generation`);
    column "Gen j" is position ``n_prompt - 1 + j``, the position whose next-token distribution
    produced Gen j (so row ``out``'s top-1 is Gen j), matching the sweep's columns. Rows as in
    :func:`~lenskit.charts.lens.lens_heatmap` (``emb`` at the bottom, ``out`` on top), colours
    from :data:`~lenskit.charts.metrics.METRICS` on their fixed domains; each cell shows its
    top-1 token. The title names the lens (``result.lens``).

    Args:
        result: a LensResult over T + G positions, or a :class:`~lenskit.results.GenerationLens`
            (then ``n_prompt`` comes from it).
        n_prompt: T, the number of prompt tokens.
        metric: one of :func:`~lenskit.charts.metrics.generation_metric_names` (no target here).
        cell_width, cell_height: pixels per cell.
    """
    if isinstance(result, GenerationLens):
        if n_prompt is None:
            n_prompt = result.n_prompt
        result = result.result
    spec = get_metric(metric)
    t = result.n_positions
    if n_prompt is None or not 1 <= int(n_prompt) <= t:
        raise InputError(f"n_prompt must lie in [1, {t}], got {n_prompt}")
    frame, labels = _generation_frame(result, spec, int(n_prompt))
    g, r = len(labels), result.n_rows
    if cell_width is None:
        cell_width = max(12, min(70, GEN_CELLS_BUDGET // max(g, 1)))
    if cell_height is None:
        cell_height = max(8, min(18, 620 // max(r, 1)))
    x = _gen_x(labels, "generated token (column Gen j: the position that predicts it)", cell_width)
    y = _generation_y(result, cell_height)
    height = max(cell_height * r, MIN_PLOT_HEIGHT)
    colour = metric_colour(spec, result.vocab_size, frame["value"].to_numpy(), height)
    tooltip: list[Any] = [
        alt.Tooltip("gen_label:N", title="predicts"),
        alt.Tooltip("token:N", title="input token"),
        alt.Tooltip("layer:N", title="layer"),
        *scale_note_tooltip(frame),
        *metric_tooltips(result, frame, generation=True),
        *top_k_tooltip(result),
    ]
    base = alt.Chart(frame)
    layers: list[Any] = [
        base.mark_rect(stroke="white", strokeWidth=0.5).encode(
            x=x, y=y, color=colour, tooltip=tooltip
        )
    ]
    if cell_width >= 30 and cell_height >= 12:
        layers.append(cell_text(base, x, y, tooltip, fontSize=10, limit=cell_width - 2))
    title = chart_title(
        f"{lens_title(result.lens)} on the generated tokens: {spec.label}",
        f"{result.model_name or 'model'} \u00b7 {count_noun(g, 'generated token')} \u00b7 "
        f"{r} read-outs (emb \u2192 out) \u00b7 text: top-1 token",
    )
    return _gen_chart(layers, max(cell_width * g, 120), height, title)


# --- layer x layer KL ------------------------------------------------------------------------


def _pairwise_kl_max(arr: np.ndarray, names: list[str], vocab_size: Any, kl_max: Any) -> float:
    """The colour domain's upper end; InputError for a matrix or names that do not fit."""
    r = len(names)
    if arr.shape != (r, r):
        raise InputError(f"kl must have shape ({r}, {r}) for {r} layer names, got {arr.shape}")
    if len(set(names)) != r:
        raise InputError(f"layer names must be unique, got {names}")
    if kl_max is None:
        kl_max = math.log(max(int(vocab_size), 2)) if vocab_size else PAIRWISE_KL_MAX
    hi = float(kl_max)
    if not hi > 0 or not math.isfinite(hi):
        raise InputError(f"kl_max must be a positive number of nats, got {kl_max!r}")
    return hi


def _pairwise_axes(names: list[str], cell: int) -> tuple[alt.X, alt.Y]:
    """Columns ``q`` from ``emb`` on the left, rows ``p`` from ``emb`` at the bottom."""
    axis: dict[str, Any] = {"labelFontSize": 10 if cell >= 12 else 9, "ticks": False}
    if cell < 12 and len(names) > 16:
        axis["values"] = row_axis_values(len(names))
    x = alt.X(
        "q:N",
        sort=names,
        scale=alt.Scale(domain=names),
        title="layer j (q)",
        axis=alt.Axis(labelAngle=0 if cell >= 20 else -90, **axis),
    )
    y = alt.Y(
        "p:N",
        sort=names[::-1],
        scale=alt.Scale(domain=names[::-1]),
        title="layer i (p)",
        axis=alt.Axis(**axis),
    )
    return x, y


def layer_pairwise_heatmap(
    layer_names: Sequence[str] | PairwiseKL,
    kl: Any = None,
    *,
    title: str | None = None,
    subtitle: str | None = None,
    vocab_size: int | None = None,
    kl_max: float | None = None,
) -> alt.Chart:
    """Square heatmap of ``kl[i, j]`` = KL(p_row_i || p_row_j) between read-out rows, in nats.

    Rows (``p``, y) run from ``emb`` at the bottom to ``out`` on top; columns (``q``, x) from
    ``emb`` on the left. Colour: the lens view's KL colours (blue = close, red = far) on a
    FIXED, clamped domain ``0 .. kl_max``: by default ln V when ``vocab_size`` is given (the
    domain of KL(out || layer) in the lens view, whose values are this matrix's row ``out``),
    else :data:`PAIRWISE_KL_MAX` nats.

    Args:
        layer_names: ``[R]`` row names (``"emb"``, ``"1"`` .. ``"out"``), or a
            :class:`~lenskit.results.PairwiseKL` (names and matrix; ``kl`` then stays None,
            and the default subtitle names its lens and position).
        kl: ``[R, R]`` KL matrix (:func:`lenskit.layer_pairwise_kl`).
        title, subtitle: chart title (default: "Layer x layer KL") and subtitle.
        vocab_size: V, to set the domain to ``0 .. ln V``.
        kl_max: explicit upper end of the domain (wins over ``vocab_size``).
    """
    if isinstance(layer_names, PairwiseKL) and kl is None:
        pair = layer_names
        layer_names, kl = pair.layer_names, pair.kl
        if subtitle is None:
            token = format_token(str(pair.token), 16)
            subtitle = f"{lens_title(pair.lens)} · position {pair.position} ({token})"
    names = [str(n) for n in layer_names]
    arr = np.asarray(kl, dtype=np.float64)
    kl_max = _pairwise_kl_max(arr, names, vocab_size, kl_max)
    r = len(names)
    ii, jj = np.meshgrid(np.arange(r), np.arange(r), indexing="ij")
    frame = pd.DataFrame(
        {
            "p": [names[i] for i in ii.ravel()],
            "q": [names[j] for j in jj.ravel()],
            "kl": arr.ravel(),
        }
    )
    cell = max(6, min(24, 620 // max(r, 1)))
    x, y = _pairwise_axes(names, cell)
    colour = alt.Color(
        "kl:Q",
        scale=alt.Scale(domain=[0.0, kl_max], scheme="redblue", reverse=True, clamp=True),
        title="KL(p_i \u2016 p_j) (nats)",
        legend=colour_legend(cell * r),
    )
    tooltip = [
        alt.Tooltip("p:N", title="layer i (p)"),
        alt.Tooltip("q:N", title="layer j (q)"),
        alt.Tooltip("kl:Q", title="KL(p_i || p_j) (nats)", format=".4f"),
    ]
    chart = (
        alt.Chart(frame)
        .mark_rect()
        .encode(x=x, y=y, color=colour, tooltip=tooltip)
        .properties(
            width=cell * r,
            height=cell * r,
            title=chart_title(title or "Layer \u00d7 layer KL(p_i \u2016 p_j)", subtitle or ""),
            autosize=alt.AutoSizeParams(type="pad"),
        )
    )
    return configure(chart)
